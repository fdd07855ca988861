// This file is the client side of the handshake: the routing preamble, the hello
// (header, OAEP-encrypted plaintext, ML-KEM key in version 2, sealed member proof
// on the cluster port) and the processing of the server's reply.
package xlgo

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// KEMKey is the client's ML-KEM-768 key pair for one hello. It is an interface so
// that tests can use the vectors' expanded 2400-byte decapsulation key, which the
// standard library cannot load.
type KEMKey interface {
	EncapsulationKey() []byte
	Decapsulate(ct []byte) ([]byte, error)
}

type stdKEM struct{ dk *mlkem.DecapsulationKey768 }

func (k stdKEM) EncapsulationKey() []byte              { return k.dk.EncapsulationKey().Bytes() }
func (k stdKEM) Decapsulate(ct []byte) ([]byte, error) { return k.dk.Decapsulate(ct) }

// ClientSecrets is the client's fresh randomness for one hello, never reused.
type ClientSecrets struct {
	Key1      [32]byte
	Nonce     [32]byte
	Ephemeral *ecdh.PrivateKey
	Timestamp uint64
	KEM       KEMKey // version 2 only
}

// NewClientSecrets draws fresh secrets from crypto/rand, with the clock as timestamp.
func NewClientSecrets(v Version, now time.Time) (*ClientSecrets, error) {
	s := &ClientSecrets{Timestamp: uint64(now.Unix())}
	rand.Read(s.Key1[:])
	rand.Read(s.Nonce[:])
	var err error
	if s.Ephemeral, err = ecdh.X25519().GenerateKey(rand.Reader); err != nil {
		return nil, err
	}
	if v == V2 {
		dk, err := mlkem.GenerateKey768()
		if err != nil {
			return nil, err
		}
		s.KEM = stdKEM{dk}
	}
	return s, nil
}

// HelloParams says what hello to build.
type HelloParams struct {
	Version Version
	Port    Port
	CK      *rsa.PublicKey // the server's encryption key, from the directory
	Member  *Identity      // own identity; cluster port only
	// Rand supplies the OAEP seed, then the PSS salt. nil means crypto/rand. Tests
	// pass the seed and salt recovered from the vectors to reproduce them exactly.
	Rand io.Reader
	// RefuseSentinel marks a version 1 hello sent as a fallback by a client that
	// speaks version 2: a reply carrying HybridSentinel is then a downgrade.
	RefuseSentinel bool
}

// ClientHandshake is a hello that was built and is waiting for its reply.
type ClientHandshake struct {
	Params         HelloParams
	Secrets        *ClientSecrets
	Hello          []byte // the complete hello as sent
	Plaintext      []byte // the 106-byte OAEP plaintext
	ProofPlaintext []byte // cluster port: id_len | NodeID | sig_len | signature
}

// ErrDowngrade is returned when a fallback version 1 reply carries the sentinel.
var ErrDowngrade = errors.New("downgrade: a version 1 reply carries the hybrid sentinel after a fallback")

// NewClientHandshake builds the hello.
func NewClientHandshake(p HelloParams, s *ClientSecrets) (*ClientHandshake, error) {
	if p.Rand == nil {
		p.Rand = rand.Reader
	}
	if err := checkHelloParams(p, s); err != nil {
		return nil, err
	}
	c := &ClientHandshake{Params: p, Secrets: s, Plaintext: helloPlaintext(p.Version, p.Port, s)}
	header := helloHeader(p.Version, p.CK.Size(), proofLen(p))
	rsaCT, err := rsa.EncryptOAEP(sha256.New(), p.Rand, p.CK, c.Plaintext, p.Version.helloLabel())
	if err != nil {
		return nil, err
	}
	signed := concat(header, rsaCT)
	if p.Version == V2 {
		signed = append(signed, s.KEM.EncapsulationKey()...)
	}
	c.Hello = signed
	if p.Port == PortCluster {
		sealed, err := c.sealProof(signed)
		if err != nil {
			return nil, err
		}
		c.Hello = concat(signed, sealed)
	}
	return c, nil
}

func checkHelloParams(p HelloParams, s *ClientSecrets) error {
	if p.Version != V1 && p.Version != V2 {
		return fmt.Errorf("unsupported version %d", p.Version)
	}
	if p.CK == nil {
		return errors.New("no server ck")
	}
	if err := checkModulus(p.CK.N.BitLen()); err != nil {
		return err
	}
	if p.Version == V2 && (s.KEM == nil || len(s.KEM.EncapsulationKey()) != KEMKeyLen) {
		return errors.New("version 2 needs an ML-KEM-768 key")
	}
	if p.Port == PortCluster && p.Member == nil {
		return errors.New("the cluster port needs a member identity")
	}
	if p.Port != PortClient && p.Port != PortCluster {
		return fmt.Errorf("unknown port kind %d", p.Port)
	}
	return nil
}

// proofLen is 0 on the client port, 1 + id_len + 2 + k_sk + 16 on the cluster port.
func proofLen(p HelloParams) int {
	if p.Port != PortCluster {
		return 0
	}
	return 1 + len(p.Member.NodeID) + 2 + p.Member.SK.Size() + 16
}

func helloHeader(v Version, rsaLen, proofLen int) []byte {
	h := []byte{magic0, magic1, byte(v), TypeHello, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(h[4:], uint16(rsaLen))
	binary.BigEndian.PutUint16(h[6:], uint16(proofLen))
	return h
}

// helloPlaintext is version | port | timestamp | key1 | client nonce | X25519 public.
func helloPlaintext(v Version, port Port, s *ClientSecrets) []byte {
	pt := make([]byte, 0, HelloPlainLen)
	pt = append(pt, byte(v), byte(port))
	pt = binary.BigEndian.AppendUint64(pt, s.Timestamp)
	pt = append(pt, s.Key1[:]...)
	pt = append(pt, s.Nonce[:]...)
	return append(pt, s.Ephemeral.PublicKey().Bytes()...)
}

// sealProof signs PROOF_CONTEXT | signed_part with sk (PSS, salt 32) and seals
// id_len | NodeID | sig_len | signature under key1 with signed_part as AAD.
func (c *ClientHandshake) sealProof(signed []byte) ([]byte, error) {
	m := c.Params.Member
	digest := sha256.Sum256(concat(c.Params.Version.proofContext(), signed))
	sig, err := rsa.SignPSS(c.Params.Rand, m.SK, crypto.SHA256, digest[:], &rsa.PSSOptions{SaltLength: 32})
	if err != nil {
		return nil, err
	}
	proof := append([]byte{byte(len(m.NodeID))}, m.NodeID...)
	proof = binary.BigEndian.AppendUint16(proof, uint16(len(sig)))
	c.ProofPlaintext = append(proof, sig...)
	aead, err := newGCM(c.Secrets.Key1[:])
	if err != nil {
		return nil, err
	}
	return aead.Seal(nil, proofNonce, c.ProofPlaintext, signed), nil
}

// RoutePreamble is the 12 bytes a client may send before a client-port hello: its
// version byte is 01 in both protocol versions.
func RoutePreamble(ck *rsa.PublicKey) ([]byte, error) {
	hint, err := CKHint(ck)
	if err != nil {
		return nil, err
	}
	return append([]byte{magic0, magic1, 1, TypeRoute}, hint[:]...), nil
}

// ReplyLen is how many bytes the client must read after its hello.
func (c *ClientHandshake) ReplyLen() int { return c.Params.Version.ReplyLen() }

// FinishReply checks and opens the reply and derives the session keys.
func (c *ClientHandshake) FinishReply(reply []byte) (*SessionKeys, error) {
	v := c.Params.Version
	if err := checkReplyHeader(v, reply); err != nil {
		return nil, err
	}
	pt, err := c.openReply(reply)
	if err != nil {
		return nil, err
	}
	key2, nonce, spub := pt[0:32], pt[32:64], pt[64:96]
	if v == V1 && c.Params.RefuseSentinel && bytes.Equal(nonce[24:], HybridSentinel) {
		return nil, ErrDowngrade
	}
	shared, kemShared, err := c.agree(spub, pt[96:])
	if err != nil {
		return nil, err
	}
	keys, err := deriveKeys(v, c.Hello, reply, key2, shared, kemShared)
	if err != nil {
		return nil, err
	}
	keys.ServerNonce = append([]byte(nil), nonce...)
	return keys, nil
}

func checkReplyHeader(v Version, reply []byte) error {
	if len(reply) != v.ReplyLen() {
		return fmt.Errorf("reply of %d bytes, expected %d", len(reply), v.ReplyLen())
	}
	if reply[0] != magic0 || reply[1] != magic1 || reply[2] != byte(v) || reply[3] != TypeReply {
		return fmt.Errorf("bad reply header % x", reply[:4])
	}
	if int(binary.BigEndian.Uint16(reply[4:6])) != v.replyBodyLen() {
		return errors.New("bad reply body length")
	}
	return nil
}

// openReply opens the body under key1 with AAD = reply header | SHA-256(hello).
func (c *ClientHandshake) openReply(reply []byte) ([]byte, error) {
	aead, err := newGCM(c.Secrets.Key1[:])
	if err != nil {
		return nil, err
	}
	helloHash := sha256.Sum256(c.Hello)
	aad := concat(reply[:ReplyHeaderLen], helloHash[:])
	pt, err := aead.Open(nil, replyNonce, reply[ReplyHeaderLen:], aad)
	if err != nil {
		return nil, errors.New("reply does not open under key1")
	}
	return pt, nil
}

// agree runs X25519 (ecdh refuses an all-zero result) and, in version 2, ML-KEM decapsulation.
func (c *ClientHandshake) agree(serverPub, kemCT []byte) (x, k []byte, err error) {
	pub, err := ecdh.X25519().NewPublicKey(serverPub)
	if err != nil {
		return nil, nil, err
	}
	if x, err = c.Secrets.Ephemeral.ECDH(pub); err != nil {
		return nil, nil, err
	}
	if c.Params.Version == V2 {
		if k, err = c.Secrets.KEM.Decapsulate(kemCT); err != nil {
			return nil, nil, err
		}
	}
	return x, k, nil
}
