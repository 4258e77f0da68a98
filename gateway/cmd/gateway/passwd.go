package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"outpost/configs/mqtt"
	"outpost/gateway/durable"
)

// stdin is what passwd reads a password from (a test's own).
var stdin io.Reader = os.Stdin

// cmdPasswd adds a device's line to an mqtt link's password file, or
// replaces it: the hash of a password read from stdin, or of a new one
// it prints with -generate.
func cmdPasswd(c *command, args []string, stdout, stderr io.Writer) int {
	flags := c.flags(stderr)
	file := flags.String("file", "", "the link's password file (its credentials); made, readable by its owner only, if it is not there")
	generate := flags.Bool("generate", false, "make a random password and print it, instead of reading one from stdin")
	remove := flags.Bool("remove", false, "remove the device's line")
	if ok, code := c.parse(flags, args, stdout); !ok {
		return code
	}
	if *file == "" || flags.NArg() != 1 {
		fmt.Fprintf(stderr, "%s passwd: give -file and one device id (see %s passwd --help)\n", prog, prog)
		return 2
	}
	device := flags.Arg(0)
	old, err := os.ReadFile(*file)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stderr, "%s passwd: %v\n", prog, err)
		return 1
	}
	if len(old) > 0 {
		if _, err := mqtt.ParseCredentials(*file, old); err != nil {
			fmt.Fprintf(stderr, "%s passwd: %v; fix or remove that line first\n", prog, err)
			return 1
		}
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(old), "\n"), "\n") {
		if l != "" && !strings.HasPrefix(l, device+":") {
			lines = append(lines, l)
		}
	}
	var password string
	switch {
	case *remove:
	case *generate:
		b := make([]byte, 16)
		rand.Read(b)
		password = hex.EncodeToString(b)
	default:
		s := bufio.NewScanner(stdin)
		if !s.Scan() || strings.TrimSpace(s.Text()) == "" {
			fmt.Fprintf(stderr, "%s passwd: no password on stdin (give one line, or use -generate)\n", prog)
			return 2
		}
		password = strings.TrimSpace(s.Text())
	}
	if !*remove {
		if len(password) < 8 {
			fmt.Fprintf(stderr, "%s passwd: the password is %d characters; give at least 8\n", prog, len(password))
			return 2
		}
		line, err := mqtt.Hash(device, password)
		if err != nil {
			fmt.Fprintf(stderr, "%s passwd: %v\n", prog, err)
			return 1
		}
		lines = append(lines, line)
	}
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	if err := durable.WriteFile(*file, b.Bytes()); err != nil {
		fmt.Fprintf(stderr, "%s passwd: %v\n", prog, err)
		return 1
	}
	if err := os.Chmod(*file, 0o600); err != nil {
		fmt.Fprintf(stderr, "%s passwd: %v\n", prog, err)
		return 1
	}
	switch {
	case *remove:
		fmt.Fprintf(stdout, "%s removed from %s; reload the gateway to apply it\n", device, *file)
	case *generate:
		fmt.Fprintf(stdout, "%s: %s\n(set it in the device; reload the gateway to apply it)\n", device, password)
	default:
		fmt.Fprintf(stdout, "%s set in %s; reload the gateway to apply it\n", device, *file)
	}
	return 0
}
