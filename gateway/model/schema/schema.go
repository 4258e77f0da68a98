// Package schema holds the JSON Schema of the hub contract's payloads
// (message.schema.json) and validates payloads against it. Tests, the
// testbench and the hub team use it; the gateway itself does not.
package schema

import (
	"bytes"
	_ "embed"
	"fmt"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// JSON is the schema document.
//
//go:embed message.schema.json
var JSON []byte

var compiled = sync.OnceValues(func() (*jsonschema.Schema, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(JSON))
	if err != nil {
		return nil, fmt.Errorf("message.schema.json is not JSON: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource("message.schema.json", doc); err != nil {
		return nil, err
	}
	return c.Compile("message.schema.json")
})

// Validate checks one MQTT payload of a device topic against the schema.
func Validate(payload []byte) error {
	s, err := compiled()
	if err != nil {
		return err
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(payload))
	if err != nil {
		return fmt.Errorf("payload is not JSON: %w", err)
	}
	return s.Validate(inst)
}
