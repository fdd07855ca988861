// This file is the server side of the handshake (section "Server processing of a
// hello", steps 1 to 14, with version 2's changes): checking a hello, refusing it
// with the reference's reason, and building the reply and session keys.
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
	"fmt"
)

// Refusal is a refused hello. Reason is the reference's metric reason; on the wire
// every refusal looks the same (nothing sent, then a reset).
type Refusal struct {
	Reason string
	Detail string
}

func (r *Refusal) Error() string { return "refused [" + r.Reason + "]: " + r.Detail }

func refuse(reason, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// Server holds what a member needs to answer hellos on its ports.
type Server struct {
	Identity  *Identity
	Directory *Directory
	Mode      PQMode
	Cache     *ReplayCache
	// Encapsulate replaces ML-KEM-768 encapsulation when set (tests derandomise
	// it); it must perform FIPS 203's input check on ek.
	Encapsulate func(ek []byte) (shared, ct []byte, err error)
}

// ServerSecrets is the server's fresh randomness for one reply.
type ServerSecrets struct {
	Key2      [32]byte
	Nonce     [32]byte
	Ephemeral *ecdh.PrivateKey
}

// NewServerSecrets draws fresh server secrets from crypto/rand.
func NewServerSecrets() (*ServerSecrets, error) {
	s := &ServerSecrets{}
	rand.Read(s.Key2[:])
	rand.Read(s.Nonce[:])
	var err error
	s.Ephemeral, err = ecdh.X25519().GenerateKey(rand.Reader)
	return s, err
}

// Accepted is a hello the server answered.
type Accepted struct {
	Version        Version
	Port           Port
	Reply          []byte
	Keys           *SessionKeys
	Peer           []byte // proven NodeID on the cluster port; nil on the client port
	Plaintext      []byte // the decrypted hello plaintext
	ProofPlaintext []byte
	ReplyPlaintext []byte
}

// helloInfo is what the header says (steps 2 to 6).
type helloInfo struct {
	version          Version
	rsaLen, proofLen int
}

func (h helloInfo) total() int { return HeaderLen + h.rsaLen + h.version.kemLen() + h.proofLen }

// checkHeader runs steps 2 to 6 on the 8-byte header.
func (s *Server) checkHeader(port Port, hdr []byte) (helloInfo, error) {
	if hdr[0] != magic0 || hdr[1] != magic1 {
		return helloInfo{}, refuse("bad_magic", "magic % x", hdr[:2])
	}
	v := Version(hdr[2])
	switch {
	case v == V1 && s.Mode == Required:
		return helloInfo{}, refuse("classical_refused", "version 1 hello, version 2 required")
	case v == V1, v == V2 && s.Mode != Disabled:
	default:
		return helloInfo{}, refuse("unsupported_version", "version byte %d", hdr[2])
	}
	if hdr[3] != TypeHello {
		return helloInfo{}, refuse("unexpected_type", "type %d", hdr[3])
	}
	h := helloInfo{v, int(binary.BigEndian.Uint16(hdr[4:6])), int(binary.BigEndian.Uint16(hdr[6:8]))}
	if h.rsaLen != s.Identity.CK.Size() {
		return helloInfo{}, refuse("bad_length", "rsa_len %d, own ck is %d bytes", h.rsaLen, s.Identity.CK.Size())
	}
	if port == PortClient && h.proofLen != 0 || port == PortCluster && (h.proofLen < MinProofLen || h.proofLen > MaxProofLen) {
		return helloInfo{}, refuse("bad_length", "proof_len %d on the %s port", h.proofLen, port)
	}
	return h, nil
}

// ProcessHello checks a whole hello received on port, at server time now (Unix
// seconds), and answers it with sec. Any error is a *Refusal.
func (s *Server) ProcessHello(port Port, hello []byte, now int64, sec *ServerSecrets) (*Accepted, error) {
	if len(hello) < HeaderLen {
		return nil, refuse("bad_length", "hello of %d bytes", len(hello))
	}
	h, err := s.checkHeader(port, hello[:HeaderLen])
	if err != nil {
		return nil, err
	}
	if len(hello) != h.total() {
		return nil, refuse("bad_length", "hello of %d bytes, header says %d", len(hello), h.total())
	}
	a := &Accepted{Version: h.version, Port: port}
	kemShared, kemCT, err := s.encapsulate(h, hello)
	if err != nil {
		return nil, err
	}
	if err := s.decryptHello(a, h, port, hello); err != nil {
		return nil, err
	}
	if port == PortCluster {
		if err := s.checkProof(a, h, hello); err != nil {
			return nil, err
		}
	}
	if err := s.checkFresh(a.Plaintext, now); err != nil {
		return nil, err
	}
	return a, s.answer(a, hello, sec, kemShared, kemCT)
}

// encapsulate is the step version 2 adds between steps 7 and 8 [bad_kem_key].
func (s *Server) encapsulate(h helloInfo, hello []byte) (shared, ct []byte, err error) {
	if h.version != V2 {
		return nil, nil, nil
	}
	off := HeaderLen + h.rsaLen
	ek := hello[off : off+KEMKeyLen]
	if s.Encapsulate != nil {
		shared, ct, err = s.Encapsulate(ek)
	} else {
		var key *mlkem.EncapsulationKey768
		if key, err = mlkem.NewEncapsulationKey768(ek); err == nil {
			shared, ct = key.Encapsulate()
		}
	}
	if err != nil {
		return nil, nil, refuse("bad_kem_key", "%v", err)
	}
	return shared, ct, nil
}

// decryptHello runs steps 8 to 10.
func (s *Server) decryptHello(a *Accepted, h helloInfo, port Port, hello []byte) error {
	ct := hello[HeaderLen : HeaderLen+h.rsaLen]
	pt, err := rsa.DecryptOAEP(sha256.New(), nil, s.Identity.CK, ct, h.version.helloLabel())
	if err != nil || len(pt) != HelloPlainLen {
		return refuse("undecryptable", "OAEP")
	}
	if pt[0] != byte(h.version) {
		return refuse("unsupported_version", "plaintext version %d, header %d", pt[0], h.version)
	}
	if pt[1] != byte(port) {
		return refuse("wrong_port", "hello for port %d on the %s port", pt[1], port)
	}
	a.Plaintext = pt
	return nil
}

// checkProof runs step 11: open, parse, look up, verify.
func (s *Server) checkProof(a *Accepted, h helloInfo, hello []byte) error {
	signedLen := HeaderLen + h.rsaLen + h.version.kemLen()
	signed := hello[:signedLen]
	aead, err := newGCM(a.Plaintext[10:42])
	if err != nil {
		return err
	}
	proof, err := aead.Open(nil, proofNonce, hello[signedLen:], signed)
	if err != nil {
		return refuse("bad_proof", "proof does not open")
	}
	id, sig, err := parseProof(proof)
	if err != nil {
		return err
	}
	m := s.Directory.ByNodeID(id)
	if m == nil {
		return refuse("not_member", "NodeID %x", id)
	}
	digest := sha256.Sum256(concat(h.version.proofContext(), signed))
	opts := &rsa.PSSOptions{SaltLength: 32, Hash: crypto.SHA256}
	if err := rsa.VerifyPSS(m.SKPub, crypto.SHA256, digest[:], sig, opts); err != nil {
		return refuse("bad_signature", "member %s", m.Name)
	}
	a.ProofPlaintext, a.Peer = proof, id
	return nil
}

// parseProof splits id_len | NodeID | sig_len | signature [bad_proof].
func parseProof(p []byte) (id, sig []byte, err error) {
	if len(p) < 1 {
		return nil, nil, refuse("bad_proof", "empty proof")
	}
	n := int(p[0])
	if (n != 20 && n != 32) || len(p) < 1+n+2 {
		return nil, nil, refuse("bad_proof", "id_len %d", n)
	}
	sigLen := int(binary.BigEndian.Uint16(p[1+n:]))
	if len(p)-(1+n+2) != sigLen {
		return nil, nil, refuse("bad_proof", "sig_len %d, %d bytes left", sigLen, len(p)-(1+n+2))
	}
	return p[1 : 1+n], p[1+n+2:], nil
}

// checkFresh runs step 12: clock skew, then the replay cache.
func (s *Server) checkFresh(pt []byte, now int64) error {
	ts := binary.BigEndian.Uint64(pt[2:10])
	// |ts - now| <= 30 without overflow: compare in uint64 on the right side of now.
	var skewed bool
	if now < 0 {
		skewed = true
	} else if un := uint64(now); ts >= un {
		skewed = ts-un > MaxClockSkew
	} else {
		skewed = un-ts > MaxClockSkew
	}
	if skewed {
		return refuse("clock_skew", "timestamp %d, now %d", ts, now)
	}
	if reason := s.Cache.CheckAndRecord(pt[42:74], now); reason != "" {
		return refuse(reason, "client nonce")
	}
	return nil
}

// answer runs step 13: the reply and the session keys.
func (s *Server) answer(a *Accepted, hello []byte, sec *ServerSecrets, kemShared, kemCT []byte) error {
	clientPub, err := ecdh.X25519().NewPublicKey(a.Plaintext[74:106])
	if err != nil {
		return refuse("undecryptable", "client X25519 key")
	}
	shared, err := sec.Ephemeral.ECDH(clientPub)
	if err != nil {
		return refuse("undecryptable", "X25519: %v", err)
	}
	nonce := sec.Nonce
	if a.Version == V1 && s.Mode != Disabled {
		copy(nonce[24:], HybridSentinel) // tell a fallen-back client we speak version 2
	}
	a.ReplyPlaintext = concat(sec.Key2[:], nonce[:], sec.Ephemeral.PublicKey().Bytes(), kemCT)
	if a.Reply, err = sealReply(a.Version, a.Plaintext[10:42], hello, a.ReplyPlaintext); err != nil {
		return err
	}
	a.Keys, err = deriveKeys(a.Version, hello, a.Reply, sec.Key2[:], shared, kemShared)
	if err == nil {
		a.Keys.ServerNonce = nonce[:]
	}
	return err
}

// sealReply builds reply header | AES-256-GCM(key1, REPLY_NONCE, header | SHA-256(hello), pt).
func sealReply(v Version, key1, hello, pt []byte) ([]byte, error) {
	header := []byte{magic0, magic1, byte(v), TypeReply, 0, 0}
	binary.BigEndian.PutUint16(header[4:], uint16(v.replyBodyLen()))
	aead, err := newGCM(key1)
	if err != nil {
		return nil, err
	}
	helloHash := sha256.Sum256(hello)
	return aead.Seal(header, replyNonce, pt, concat(header, helloHash[:])), nil
}

// ownHint reports whether a routing preamble's hint names this server's ck.
func (s *Server) ownHint(hint []byte) bool {
	own, err := CKHint(&s.Identity.CK.PublicKey)
	return err == nil && bytes.Equal(own[:], hint)
}
