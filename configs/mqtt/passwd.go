package mqtt

import (
	"bufio"
	"bytes"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// Credentials are the devices' password hashes, by device id, as a
// password file holds them: DEVICE:$7$ITERATIONS$SALT$HASH per line, the
// format of mosquitto_passwd (PBKDF2 with SHA-512, salt and hash in
// base64), so that either tool can write the file.
type Credentials map[string]hash

type hash struct {
	iter       int
	salt, want []byte
}

// Iterations is how many rounds of PBKDF2 gateway passwd uses: a
// password is checked once per connection, and a station box takes about
// 20 ms for them.
const Iterations = 20000

// maxCredentials bounds the password file: a station has at most some
// hundreds of devices.
const maxCredentials = 1 << 20

// ReadCredentials reads a password file, which must be readable by its
// owner only. Errors name the file and line; they never show a hash.
func ReadCredentials(path string) (Credentials, error) {
	info, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s is not there: make it, a line per device, with gateway passwd -file %s -generate DEVICE", path, path)
	}
	if err != nil {
		return nil, err
	}
	switch {
	case !info.Mode().IsRegular():
		return nil, fmt.Errorf("%s is not a file", path)
	case info.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("%s can be read by group or others (mode %04o): the devices' password file must be readable by the gateway's user only; run chmod 600 %s", path, info.Mode().Perm(), path)
	case info.Size() > maxCredentials:
		return nil, fmt.Errorf("%s is %d bytes, too large for a password file", path, info.Size())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseCredentials(path, b)
}

// maxPassword bounds a password file of the gateway's own.
const maxPassword = 1024

// ReadPassword reads the gateway's password at an external broker from a
// file readable by its owner only: the password on one line (white space
// around it ignored). The error never shows the password.
func ReadPassword(path string) (string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	switch {
	case !info.Mode().IsRegular():
		return "", fmt.Errorf("%s is not a file", path)
	case info.Mode().Perm()&0o077 != 0:
		return "", fmt.Errorf("%s can be read by group or others (mode %04o): the gateway's password must be readable by the gateway's user only; run chmod 600 %s", path, info.Mode().Perm(), path)
	case info.Size() > maxPassword:
		return "", fmt.Errorf("%s is %d bytes, too large for a password (expected the password on one line)", path, info.Size())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	pw := strings.TrimSpace(string(b))
	switch {
	case pw == "":
		return "", fmt.Errorf("%s is empty (expected the gateway's password on one line)", path)
	case strings.ContainsAny(pw, "\r\n"):
		return "", fmt.Errorf("%s holds more than one line (expected the gateway's password on one line)", path)
	}
	return pw, nil
}

// ParseCredentials reads the lines of a password file; name is the file's,
// for errors.
func ParseCredentials(name string, b []byte) (Credentials, error) {
	c := Credentials{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		dev, h, ok := strings.Cut(line, ":")
		if !ok || dev == "" {
			return nil, fmt.Errorf("%s:%d: expected DEVICE:HASH (as gateway passwd or mosquitto_passwd write it)", name, n)
		}
		parsed, err := parseHash(h)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %s: %v", name, n, dev, err)
		}
		if _, dup := c[dev]; dup {
			return nil, fmt.Errorf("%s:%d: %s has a line already", name, n, dev)
		}
		c[dev] = parsed
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	return c, nil
}

func parseHash(h string) (hash, error) {
	parts := strings.Split(h, "$")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "7" {
		return hash{}, fmt.Errorf("not a $7$ (PBKDF2-SHA512) hash: write the line again with gateway passwd, or mosquitto_passwd 2.0 or later")
	}
	iter, err := strconv.Atoi(parts[2])
	if err != nil || iter < 1 || iter > 10_000_000 {
		return hash{}, fmt.Errorf("iterations %q out of range (1 to 10000000)", parts[2])
	}
	salt, err1 := base64.StdEncoding.DecodeString(parts[3])
	want, err2 := base64.StdEncoding.DecodeString(parts[4])
	if err1 != nil || err2 != nil || len(salt) == 0 || len(want) != sha512.Size {
		return hash{}, fmt.Errorf("salt or hash is not base64 of the right size")
	}
	return hash{iter, salt, want}, nil
}

// Has says whether the device has a line.
func (c Credentials) Has(device string) bool { _, ok := c[device]; return ok }

// Verify says whether password is the device's.
func (c Credentials) Verify(device, password string) bool {
	h, ok := c[device]
	if !ok {
		return false
	}
	got, err := pbkdf2.Key(sha512.New, password, h.salt, h.iter, sha512.Size)
	return err == nil && subtle.ConstantTimeCompare(got, h.want) == 1
}

// Hash makes a password file's line for a device.
func Hash(device, password string) (string, error) {
	salt := make([]byte, 12)
	rand.Read(salt)
	key, err := pbkdf2.Key(sha512.New, password, salt, Iterations, sha512.Size)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s:$7$%d$%s$%s", device, Iterations, base64.StdEncoding.EncodeToString(salt), base64.StdEncoding.EncodeToString(key)), nil
}

// String never shows the hashes.
func (c Credentials) String() string { return fmt.Sprintf("[%d device credentials]", len(c)) }
