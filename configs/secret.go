package configs

import (
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strings"
)

// ReadKey reads a secret key kept in a file of its own, outside the
// station file's plain text: hex on one line (spaces ignored), of one of
// the sizes given in bytes (any size from 16 to 64 when none is given).
// The file must be readable by its owner only: a key others can read is
// refused, with the chmod that fixes it. The error never shows the key.
func ReadKey(path string, sizes ...int) ([]byte, error) {
	text, err := readSecret(path, "a key", "hex digits on one line")
	if err != nil {
		return nil, err
	}
	key, err := hex.DecodeString(text)
	if err != nil || len(text) == 0 {
		return nil, fmt.Errorf("%s does not hold a key in hex (expected hex digits 0-9 a-f on one line)", path)
	}
	switch {
	case len(sizes) == 0 && (len(key) < 16 || len(key) > 64):
		return nil, fmt.Errorf("%s holds a key of %d bytes (expected 16 to 64 bytes, 32 to 128 hex digits)", path, len(key))
	case len(sizes) > 0 && !slices.Contains(sizes, len(key)):
		digits := make([]int, len(sizes))
		for i, n := range sizes {
			digits[i] = 2 * n
		}
		return nil, fmt.Errorf("%s holds a key of %d bytes (expected %s bytes: %s hex digits)", path, len(key), orList(sizes), orList(digits))
	}
	return key, nil
}

// orList writes 16, 24 or 32.
func orList(s []int) string {
	parts := make([]string, len(s))
	for i, v := range s {
		parts[i] = fmt.Sprint(v)
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " or " + parts[len(parts)-1]
}

// ReadToken reads the status server's token from a file readable by the
// gateway's user only: at least 16 characters on one line.
func ReadToken(path string) (string, error) {
	text, err := readSecret(path, "a token", "a token on one line")
	if err != nil {
		return "", err
	}
	if len(text) < 16 {
		return "", fmt.Errorf("%s holds a token of %d characters (expected at least 16, e.g. from: openssl rand -hex 16)", path, len(text))
	}
	return text, nil
}

// readSecret reads a small file that only the gateway's user may read, and
// returns its text without white space.
func readSecret(path, what, expected string) (string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return "", fileErr(err)
	}
	switch {
	case !info.Mode().IsRegular():
		return "", fmt.Errorf("%s is not a file", path)
	case info.Mode().Perm()&0o077 != 0:
		return "", fmt.Errorf("%s can be read by group or others (mode %04o): %s must be readable by the gateway's user only; run chmod 600 %s", path, info.Mode().Perm(), what, path)
	case info.Size() > 1024:
		return "", fmt.Errorf("%s is %d bytes, too large for %s (expected %s)", path, info.Size(), what, expected)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fileErr(err)
	}
	return strings.Join(strings.Fields(string(raw)), ""), nil
}
