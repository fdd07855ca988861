// This file is the key schedule (sections "Key schedule" and version 2's): the
// transcript hash over both whole messages, HKDF-Extract with it as salt, and
// HKDF-Expand into one key per direction.
package xlgo

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
)

// SessionKeys is what a finished handshake yields, plus the intermediate values the
// vectors publish so that each step can be checked on its own.
type SessionKeys struct {
	TranscriptHash []byte
	PRK            []byte
	C2S            []byte // client sends, server receives
	S2C            []byte // server sends, client receives
	X25519Shared   []byte
	KEMShared      []byte // version 2 only
	ServerNonce    []byte // from the reply; carries the sentinel in version 1
}

// deriveKeys runs the schedule over the exact bytes sent and received. The IKM is
// key2 | x25519 shared (| ML-KEM shared in version 2), in that order.
func deriveKeys(v Version, hello, reply, key2, x25519Shared, kemShared []byte) (*SessionKeys, error) {
	th := sha256.New()
	th.Write(v.transcriptContext())
	th.Write(hello)
	th.Write(reply)
	k := &SessionKeys{TranscriptHash: th.Sum(nil), X25519Shared: x25519Shared, KEMShared: kemShared}
	ikm := concat(key2, x25519Shared, kemShared)
	var err error
	if k.PRK, err = hkdf.Extract(sha256.New, ikm, k.TranscriptHash); err != nil {
		return nil, err
	}
	if k.C2S, err = hkdf.Expand(sha256.New, k.PRK, v.c2sInfo(), 32); err != nil {
		return nil, err
	}
	if k.S2C, err = hkdf.Expand(sha256.New, k.PRK, v.s2cInfo(), 32); err != nil {
		return nil, err
	}
	return k, nil
}

// newGCM makes the AES-256-GCM AEAD used everywhere (12-byte nonce, 16-byte tag).
func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// concat joins byte strings into a fresh slice (the spec's "a | b").
func concat(parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
