// Package schema holds the JSON Schemas of the hub contract's payloads
// (message.schema.json, command.schema.json, snapshot.schema.json) and validates payloads
// against them. Tests, the testbench and the hub team use it; the gateway
// itself does not.
package schema

import (
	"bytes"
	_ "embed"
	"fmt"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// JSON is the schema of the messages the gateway sends, Command that of
// the commands the hub sends it.
var (
	//go:embed message.schema.json
	JSON []byte
	//go:embed command.schema.json
	Command []byte
	//go:embed snapshot.schema.json
	Snapshot []byte
)

func compile(name string, doc []byte) func() (*jsonschema.Schema, error) {
	return sync.OnceValues(func() (*jsonschema.Schema, error) {
		d, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
		if err != nil {
			return nil, fmt.Errorf("%s is not JSON: %w", name, err)
		}
		c := jsonschema.NewCompiler()
		c.DefaultDraft(jsonschema.Draft2020)
		if err := c.AddResource(name, d); err != nil {
			return nil, err
		}
		return c.Compile(name)
	})
}

var (
	messageSchema  = compile("message.schema.json", JSON)
	commandSchema  = compile("command.schema.json", Command)
	snapshotSchema = compile("snapshot.schema.json", Snapshot)
)

// Validate checks one MQTT payload of a device topic against the schema.
func Validate(payload []byte) error { return validate(messageSchema, payload) }

// ValidateCommand checks one command payload against the command schema.
func ValidateCommand(payload []byte) error { return validate(commandSchema, payload) }

// ValidateSnapshot checks a station's health snapshot against its schema.
func ValidateSnapshot(payload []byte) error { return validate(snapshotSchema, payload) }

func validate(schema func() (*jsonschema.Schema, error), payload []byte) error {
	s, err := schema()
	if err != nil {
		return err
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(payload))
	if err != nil {
		return fmt.Errorf("payload is not JSON: %w", err)
	}
	return s.Validate(inst)
}
