// This file loads docs/test-vectors/v1.json and v2.json for the tests, and holds
// the helpers that turn the vectors' fixed values into this package's types.
package xlgo

import (
	"bytes"
	"crypto/ecdh"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloudflare/circl/kem"
	"github.com/cloudflare/circl/kem/mlkem/mlkem768"
)

// vectorDir is where the spec keeps the vectors, relative to interop/go.
var vectorDir = filepath.Join("..", "..", "docs", "test-vectors")

// hexBytes decodes the vectors' lowercase hex strings.
type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	d, err := hex.DecodeString(s)
	*h = d
	return err
}

type vecFile struct {
	Description     string                 `json:"description"`
	ProtocolVersion int                    `json:"protocol_version"`
	Constants       map[string]any         `json:"constants"`
	Identities      map[string]vecIdentity `json:"identities"`
	Directory       json.RawMessage        `json:"directory"`
	Handshakes      []vecHandshake         `json:"handshakes"`
	Rejections      []vecRejection         `json:"rejections"`
}

type vecIdentity struct {
	Name      string `json:"name"`
	NodeID    string `json:"node_id"`
	SKBits    int    `json:"sk_bits"`
	SKPrivPEM string `json:"sk_private_pkcs8_pem"`
	SKPubPEM  string `json:"sk_public_spki_pem"`
	CKBits    int    `json:"ck_bits"`
	CKPrivPEM string `json:"ck_private_pkcs8_pem"`
	CKPubPEM  string `json:"ck_public_spki_pem"`
}

type vecSecrets struct {
	Key1             hexBytes `json:"key1"`
	Key2             hexBytes `json:"key2"`
	Nonce            hexBytes `json:"nonce"`
	EphemeralPrivate hexBytes `json:"ephemeral_private"`
	EphemeralPublic  hexBytes `json:"ephemeral_public"`
	Timestamp        uint64   `json:"timestamp"`
}

type vecRecord struct {
	Direction string   `json:"direction"`
	Seq       uint64   `json:"seq"`
	Type      string   `json:"type"`
	Payload   hexBytes `json:"payload"`
	Record    hexBytes `json:"record"`
}

type vecHandshake struct {
	Name, Port         string
	Server             string      `json:"server"`
	Initiator          *string     `json:"initiator"`
	ClientSecrets      vecSecrets  `json:"client_secrets"`
	ServerSecrets      vecSecrets  `json:"server_secrets"`
	ServerNow          int64       `json:"server_now"`
	HelloPlaintext     hexBytes    `json:"hello_plaintext"`
	Hello              hexBytes    `json:"hello"`
	HelloHeader        hexBytes    `json:"hello_header"`
	HelloRSACiphertext hexBytes    `json:"hello_rsa_ciphertext"`
	HelloSealedProof   hexBytes    `json:"hello_sealed_proof"`
	HelloKEMKey        hexBytes    `json:"hello_kem_key"`
	ProofPlaintext     hexBytes    `json:"proof_plaintext"`
	ProofSignedMessage hexBytes    `json:"proof_signed_message"`
	ProofSignature     hexBytes    `json:"proof_signature"`
	ReplyPlaintext     hexBytes    `json:"reply_plaintext"`
	ReplyAAD           hexBytes    `json:"reply_aad"`
	Reply              hexBytes    `json:"reply"`
	X25519Shared       hexBytes    `json:"x25519_shared_secret"`
	TranscriptHash     hexBytes    `json:"transcript_hash"`
	HKDFPRK            hexBytes    `json:"hkdf_prk"`
	C2SKey             hexBytes    `json:"client_to_server_key"`
	S2CKey             hexBytes    `json:"server_to_client_key"`
	Peer               *string     `json:"peer"`
	Records            []vecRecord `json:"records"`
	KEMPublic          hexBytes    `json:"kem_public"`
	KEMPrivate         hexBytes    `json:"kem_private"`
	KEMCiphertext      hexBytes    `json:"kem_ciphertext"`
	KEMShared          hexBytes    `json:"kem_shared_secret"`
}

type vecRejection struct {
	Name                 string   `json:"name"`
	Handshake            string   `json:"handshake"`
	Port                 string   `json:"port"`
	Hello                hexBytes `json:"hello"`
	ServerNow            int64    `json:"server_now"`
	AcceptFirst          bool     `json:"accept_first"`
	ExpectedError        string   `json:"expected_error"`
	ServerRequiresHybrid *bool    `json:"server_requires_hybrid"`
}

// loadVectors reads one vector file; the test fails if it is missing.
func loadVectors(t *testing.T, name string) *vecFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(vectorDir, name))
	if err != nil {
		t.Fatalf("reading vectors: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields() // a field this code ignores would be a field it does not check
	var f vecFile
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &f
}

// forEachFile runs fn for v1.json and v2.json as subtests.
func forEachFile(t *testing.T, fn func(t *testing.T, f *vecFile, v Version)) {
	for _, v := range []Version{V1, V2} {
		name := map[Version]string{V1: "v1.json", V2: "v2.json"}[v]
		t.Run(name, func(t *testing.T) {
			f := loadVectors(t, name)
			if f.ProtocolVersion != int(v) {
				t.Fatalf("protocol_version %d", f.ProtocolVersion)
			}
			fn(t, f, v)
		})
	}
}

// forEachHandshake runs fn for every handshake of both files.
func forEachHandshake(t *testing.T, fn func(t *testing.T, f *vecFile, v Version, h *vecHandshake)) {
	forEachFile(t, func(t *testing.T, f *vecFile, v Version) {
		if len(f.Handshakes) != 2 {
			t.Fatalf("%d handshakes, expected 2", len(f.Handshakes))
		}
		for i := range f.Handshakes {
			h := &f.Handshakes[i]
			t.Run(h.Name, func(t *testing.T) { fn(t, f, v, h) })
		}
	})
}

func (f *vecFile) identity(t *testing.T, name string) *Identity {
	t.Helper()
	vi, ok := f.Identities[name]
	if !ok {
		t.Fatalf("no identity %q", name)
	}
	id, err := ParseNodeID(vi.NodeID)
	if err != nil {
		t.Fatal(err)
	}
	sk, err := ParsePrivateKeyPEM([]byte(vi.SKPrivPEM))
	if err != nil {
		t.Fatal(err)
	}
	ck, err := ParsePrivateKeyPEM([]byte(vi.CKPrivPEM))
	if err != nil {
		t.Fatal(err)
	}
	return &Identity{NodeID: id, SK: sk, CK: ck}
}

func (f *vecFile) directory(t *testing.T) *Directory {
	t.Helper()
	d, err := ParseDirectory(f.Directory)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (h *vecHandshake) port(t *testing.T) Port { return parseVecPort(t, h.Port) }

func parseVecPort(t *testing.T, s string) Port {
	t.Helper()
	switch s {
	case "client":
		return PortClient
	case "cluster":
		return PortCluster
	}
	t.Fatalf("unknown port %q", s)
	return 0
}

func x25519Key(t *testing.T, priv, pub []byte) *ecdh.PrivateKey {
	t.Helper()
	k, err := ecdh.X25519().NewPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "ephemeral_public", k.PublicKey().Bytes(), pub)
	return k
}

// circlKEM is the vectors' ML-KEM key pair, loaded from FIPS 203's expanded dk
// (crypto/mlkem accepts only the 64-byte seed, which the vectors do not have).
type circlKEM struct {
	ek []byte
	dk kem.PrivateKey
}

func (k circlKEM) EncapsulationKey() []byte { return k.ek }
func (k circlKEM) Decapsulate(ct []byte) ([]byte, error) {
	return mlkem768.Scheme().Decapsulate(k.dk, ct)
}

// clientSecrets turns client_secrets (and kem_private in v2) into ClientSecrets.
func (h *vecHandshake) clientSecrets(t *testing.T, v Version) *ClientSecrets {
	t.Helper()
	cs := h.ClientSecrets
	s := &ClientSecrets{Timestamp: cs.Timestamp, Ephemeral: x25519Key(t, cs.EphemeralPrivate, cs.EphemeralPublic)}
	copy(s.Key1[:], cs.Key1)
	copy(s.Nonce[:], cs.Nonce)
	if v == V2 {
		dk, err := mlkem768.Scheme().UnmarshalBinaryPrivateKey(h.KEMPrivate)
		if err != nil {
			t.Fatalf("kem_private: %v", err)
		}
		s.KEM = circlKEM{ek: h.KEMPublic, dk: dk}
	}
	return s
}

// serverSecrets turns server_secrets into ServerSecrets.
func (h *vecHandshake) serverSecrets(t *testing.T) *ServerSecrets {
	t.Helper()
	ss := h.ServerSecrets
	s := &ServerSecrets{Ephemeral: x25519Key(t, ss.EphemeralPrivate, ss.EphemeralPublic)}
	copy(s.Key2[:], ss.Key2)
	copy(s.Nonce[:], ss.Nonce)
	return s
}

func mustEqual(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n got  %x\n want %x", what, trunc(got), trunc(want))
	}
}

func trunc(b []byte) []byte {
	if len(b) > 48 {
		return b[:48]
	}
	return b
}

// pemDER returns the DER inside a PEM string.
func pemDER(t *testing.T, s string) []byte {
	t.Helper()
	der, err := pemBlock([]byte(s), "PUBLIC KEY")
	if err != nil {
		t.Fatal(err)
	}
	return der
}
