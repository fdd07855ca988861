// This file loads keys and identities: RSA keys in the PEM forms the spec fixes
// (SPKI "PUBLIC KEY", PKCS#8 "PRIVATE KEY"), NodeIDs, and a member's identity
// directory (files node-id, sk.pem, ck.pem; section "Identity files").
package xlgo

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// checkModulus enforces the only sizes the spec allows anywhere: 2048, 3072, 4096 bits.
func checkModulus(n int) error {
	switch n {
	case 2048, 3072, 4096:
		return nil
	}
	return fmt.Errorf("RSA modulus of %d bits: only 2048, 3072 and 4096 are allowed", n)
}

// pemBlock decodes exactly one PEM block with the wanted label; any other label
// (e.g. PKCS#1 "RSA PRIVATE KEY") is refused with a message naming it.
func pemBlock(data []byte, want string) ([]byte, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	if block.Type != want {
		return nil, fmt.Errorf("PEM label %q, expected %q", block.Type, want)
	}
	return block.Bytes, nil
}

// ParsePublicKeyPEM reads an RSA public key from an SPKI "PUBLIC KEY" PEM block.
func ParsePublicKeyPEM(data []byte) (*rsa.PublicKey, error) {
	der, err := pemBlock(data, "PUBLIC KEY")
	if err != nil {
		return nil, err
	}
	key, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, err
	}
	pub, ok := key.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("public key is %T, not RSA", key)
	}
	return pub, checkModulus(pub.N.BitLen())
}

// ParsePrivateKeyPEM reads an RSA private key from a PKCS#8 "PRIVATE KEY" PEM block.
func ParsePrivateKeyPEM(data []byte) (*rsa.PrivateKey, error) {
	der, err := pemBlock(data, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, err
	}
	priv, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("private key is %T, not RSA", key)
	}
	return priv, checkModulus(priv.N.BitLen())
}

// ParseNodeID reads the text form: lowercase hex, exactly 40 or 64 characters.
// Upper-case hex is refused (encoding/hex would accept it, so check first).
func ParseNodeID(s string) ([]byte, error) {
	if len(s) != 40 && len(s) != 64 {
		return nil, fmt.Errorf("NodeID %q: %d hex digits, expected 40 or 64", s, len(s))
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return nil, fmt.Errorf("NodeID %q: not lowercase hex", s)
		}
	}
	return hex.DecodeString(s)
}

// CKHint is the routing preamble's hint: the first 8 bytes of SHA-256 over the
// ck's SPKI DER encoding.
func CKHint(ck *rsa.PublicKey) ([8]byte, error) {
	var hint [8]byte
	der, err := x509.MarshalPKIXPublicKey(ck)
	if err != nil {
		return hint, err
	}
	sum := sha256.Sum256(der)
	copy(hint[:], sum[:8])
	return hint, nil
}

// Identity is a member's own secrets.
type Identity struct {
	NodeID []byte
	SK     *rsa.PrivateKey // signs the member proof (RSA-PSS)
	CK     *rsa.PrivateKey // decrypts hellos (RSA-OAEP)
}

// LoadIdentity reads node-id, sk.pem and ck.pem from dir. Surrounding whitespace
// of node-id is ignored, as the spec says.
func LoadIdentity(dir string) (*Identity, error) {
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) }
	idText, err := read("node-id")
	if err != nil {
		return nil, err
	}
	id, err := ParseNodeID(strings.TrimSpace(string(idText)))
	if err != nil {
		return nil, err
	}
	ident := &Identity{NodeID: id}
	for name, dst := range map[string]**rsa.PrivateKey{"sk.pem": &ident.SK, "ck.pem": &ident.CK} {
		data, err := read(name)
		if err != nil {
			return nil, err
		}
		if *dst, err = ParsePrivateKeyPEM(data); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	return ident, nil
}

// PublicPEM encodes a public key as the SPKI PEM the directory carries.
func PublicPEM(pub *rsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}

// rsaEncryptOAEP is RSA-OAEP with SHA-256 and MGF1-SHA-256 under label, with a
// fresh seed from crypto/rand.
func rsaEncryptOAEP(pub *rsa.PublicKey, pt, label []byte) ([]byte, error) {
	return rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, pt, label)
}
