// This file checks the implementation against every applicable value of
// docs/test-vectors/v1.json and v2.json: constants, keys, hellos (reproduced byte
// for byte from the recovered OAEP seed and PSS salt), replies, keys and records.
package xlgo

import (
	"bytes"
	"crypto/mlkem"
	"crypto/mlkem/mlkemtest"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math/big"
	"testing"

	"github.com/cloudflare/circl/pke/kyber/kyber768"
)

func TestVectorConstants(t *testing.T) {
	forEachFile(t, func(t *testing.T, f *vecFile, v Version) {
		want := map[string][]byte{
			"magic": {magic0, magic1}, "hello_label": v.helloLabel(),
			"proof_context": v.proofContext(), "transcript_context": v.transcriptContext(),
			"c2s_info": []byte(v.c2sInfo()), "s2c_info": []byte(v.s2cInfo()),
		}
		for k, w := range want {
			s, _ := f.Constants[k].(string)
			got, _ := hex.DecodeString(s)
			mustEqual(t, k, got, w)
		}
		numbers := map[string]float64{"max_clock_skew": MaxClockSkew}
		if v == V2 {
			numbers["kem_key_len"], numbers["kem_ciphertext_len"] = KEMKeyLen, KEMCTLen
		}
		for k, w := range numbers {
			if f.Constants[k] != w {
				t.Errorf("%s = %v, want %v", k, f.Constants[k], w)
			}
		}
		if len(f.Constants) != len(want)+len(numbers) {
			t.Errorf("%d constants, %d checked", len(f.Constants), len(want)+len(numbers))
		}
	})
}

// TestVectorIdentities checks that the keys load with the sizes the file states and
// that the directory parses and agrees with the identities.
func TestVectorIdentities(t *testing.T) {
	forEachFile(t, func(t *testing.T, f *vecFile, v Version) {
		d := f.directory(t)
		if d.Cluster != "default/vectors" || len(d.Members) != 2 {
			t.Fatalf("directory %q with %d members", d.Cluster, len(d.Members))
		}
		for name, vi := range f.Identities {
			id := f.identity(t, name)
			if id.SK.N.BitLen() != vi.SKBits || id.CK.N.BitLen() != vi.CKBits {
				t.Errorf("%s: sk %d ck %d bits", name, id.SK.N.BitLen(), id.CK.N.BitLen())
			}
			m := d.Lookup(name)
			if m == nil || !bytes.Equal(m.ID, id.NodeID) || d.ByNodeID(id.NodeID) != m {
				t.Fatalf("%s: not found in the directory", name)
			}
			if !m.SKPub.Equal(&id.SK.PublicKey) || !m.CKPub.Equal(&id.CK.PublicKey) {
				t.Errorf("%s: directory keys differ from the identity", name)
			}
			pubSK, _ := ParsePublicKeyPEM([]byte(vi.SKPubPEM))
			pubCK, _ := ParsePublicKeyPEM([]byte(vi.CKPubPEM))
			if pubSK == nil || pubCK == nil || !pubSK.Equal(m.SKPub) || !pubCK.Equal(m.CKPub) {
				t.Errorf("%s: public PEMs differ", name)
			}
		}
	})
}

// mgf1 is MGF1-SHA256 (RFC 8017 B.2.1), used to undo OAEP and PSS masking.
func mgf1(seed []byte, n int) []byte {
	var out []byte
	for c := uint32(0); len(out) < n; c++ {
		h := sha256.New()
		h.Write(seed)
		binary.Write(h, binary.BigEndian, c)
		out = h.Sum(out)
	}
	return out[:n]
}

func xorBytes(a, b []byte) []byte {
	out := make([]byte, len(a))
	for i := range a {
		out[i] = a[i] ^ b[i]
	}
	return out
}

// recoverOAEPSeed undoes the vector's OAEP encryption with the server's ckPriv:
// EM = 00 | maskedSeed | maskedDB, seed = maskedSeed xor MGF1(maskedDB).
func recoverOAEPSeed(t *testing.T, ck *rsa.PrivateKey, ct []byte) []byte {
	m := new(big.Int).Exp(new(big.Int).SetBytes(ct), ck.D, ck.N)
	em := m.FillBytes(make([]byte, ck.Size()))
	if em[0] != 0 {
		t.Fatal("OAEP: leading byte not zero")
	}
	maskedSeed, maskedDB := em[1:33], em[33:]
	return xorBytes(maskedSeed, mgf1(maskedDB, 32))
}

// recoverPSSSalt undoes the PSS encoding with the public sk: the salt is the last
// 32 bytes of DB = maskedDB xor MGF1(H).
func recoverPSSSalt(t *testing.T, sk *rsa.PublicKey, sig []byte) []byte {
	emBits := sk.N.BitLen() - 1
	emLen := (emBits + 7) / 8
	m := new(big.Int).Exp(new(big.Int).SetBytes(sig), big.NewInt(int64(sk.E)), sk.N)
	em := m.FillBytes(make([]byte, emLen))
	if em[emLen-1] != 0xbc {
		t.Fatal("PSS: no trailer 0xbc")
	}
	maskedDB, hash := em[:emLen-33], em[emLen-33:emLen-1]
	db := xorBytes(maskedDB, mgf1(hash, len(maskedDB)))
	return db[len(db)-32:]
}

// vectorHandshake rebuilds the hello with the vector's secrets and the recovered
// randomness: it must be the vector's hello byte for byte.
func vectorHandshake(t *testing.T, f *vecFile, v Version, h *vecHandshake) *ClientHandshake {
	t.Helper()
	server := f.identity(t, "server")
	rnd := recoverOAEPSeed(t, server.CK, h.HelloRSACiphertext)
	p := HelloParams{Version: v, Port: h.port(t), CK: &server.CK.PublicKey}
	if p.Port == PortCluster {
		p.Member = f.identity(t, *h.Initiator)
		rnd = append(rnd, recoverPSSSalt(t, &p.Member.SK.PublicKey, h.ProofSignature)...)
	}
	p.Rand = bytes.NewReader(rnd)
	hs, err := NewClientHandshake(p, h.clientSecrets(t, v))
	if err != nil {
		t.Fatal(err)
	}
	return hs
}

func TestVectorHelloReproduced(t *testing.T) {
	forEachHandshake(t, func(t *testing.T, f *vecFile, v Version, h *vecHandshake) {
		hs := vectorHandshake(t, f, v, h)
		mustEqual(t, "hello_plaintext", hs.Plaintext, h.HelloPlaintext)
		mustEqual(t, "hello_header", hs.Hello[:HeaderLen], h.HelloHeader)
		mustEqual(t, "hello", hs.Hello, h.Hello)
		mustEqual(t, "proof_plaintext", hs.ProofPlaintext, h.ProofPlaintext)
		rsaEnd := HeaderLen + len(h.HelloRSACiphertext)
		mustEqual(t, "hello_rsa_ciphertext", h.Hello[HeaderLen:rsaEnd], h.HelloRSACiphertext)
		kemEnd := rsaEnd + len(h.HelloKEMKey)
		mustEqual(t, "hello_kem_key", h.Hello[rsaEnd:kemEnd], h.HelloKEMKey)
		mustEqual(t, "hello_sealed_proof", h.Hello[kemEnd:], h.HelloSealedProof)
		wantLen := map[Version]map[string]int{V1: {"client": 264, "cluster": 687}, V2: {"client": 1448, "cluster": 1871}}
		if len(h.Hello) != wantLen[v][h.Port] {
			t.Errorf("hello of %d bytes", len(h.Hello))
		}
		if h.Port == "cluster" {
			checkVectorProof(t, f, v, h)
		} else if len(h.ProofPlaintext)+len(h.ProofSignedMessage)+len(h.ProofSignature) != 0 {
			t.Error("client-port vector has proof fields")
		}
	})
}

// checkVectorProof checks proof_signed_message and that the signature verifies.
func checkVectorProof(t *testing.T, f *vecFile, v Version, h *vecHandshake) {
	kemEnd := len(h.Hello) - len(h.HelloSealedProof)
	mustEqual(t, "proof_signed_message", concat(v.proofContext(), h.Hello[:kemEnd]), h.ProofSignedMessage)
	if v == V2 && len(h.ProofSignedMessage) != 1472 {
		t.Errorf("proof_signed_message of %d bytes", len(h.ProofSignedMessage))
	}
	member := f.identity(t, *h.Initiator)
	digest := sha256.Sum256(h.ProofSignedMessage)
	if err := rsa.VerifyPSS(&member.SK.PublicKey, 5 /* crypto.SHA256 */, digest[:], h.ProofSignature, &rsa.PSSOptions{SaltLength: 32}); err != nil {
		t.Errorf("proof_signature: %v", err)
	}
	id, sig, err := parseProof(h.ProofPlaintext)
	if err != nil || hex.EncodeToString(id) != *h.Peer || !bytes.Equal(sig, h.ProofSignature) {
		t.Errorf("proof_plaintext does not parse to peer and signature: %v", err)
	}
}

func TestVectorClientFinishesReply(t *testing.T) {
	forEachHandshake(t, func(t *testing.T, f *vecFile, v Version, h *vecHandshake) {
		hs := vectorHandshake(t, f, v, h)
		keys, err := hs.FinishReply(h.Reply)
		if err != nil {
			t.Fatal(err)
		}
		checkVectorKeys(t, keys, h)
		mustEqual(t, "reply_aad", replyAAD(h.Reply, h.Hello), h.ReplyAAD)
		if v == V2 {
			mustEqual(t, "kem_shared_secret", keys.KEMShared, h.KEMShared)
			mustEqual(t, "kem_public", h.KEMPublic, h.KEMPrivate[1152:2336])
			mustEqual(t, "kem_ciphertext", h.ReplyPlaintext[96:], h.KEMCiphertext)
			if len(h.Reply) != 1206 || len(h.ReplyPlaintext) != 1184 {
				t.Errorf("v2 reply %d bytes, plaintext %d", len(h.Reply), len(h.ReplyPlaintext))
			}
		} else if len(h.Reply) != 118 {
			t.Errorf("v1 reply of %d bytes", len(h.Reply))
		}
	})
}

func replyAAD(reply, hello []byte) []byte {
	sum := sha256.Sum256(hello)
	return concat(reply[:ReplyHeaderLen], sum[:])
}

func checkVectorKeys(t *testing.T, k *SessionKeys, h *vecHandshake) {
	t.Helper()
	mustEqual(t, "x25519_shared_secret", k.X25519Shared, h.X25519Shared)
	mustEqual(t, "transcript_hash", k.TranscriptHash, h.TranscriptHash)
	mustEqual(t, "hkdf_prk", k.PRK, h.HKDFPRK)
	mustEqual(t, "client_to_server_key", k.C2S, h.C2SKey)
	mustEqual(t, "server_to_client_key", k.S2C, h.S2CKey)
	mustEqual(t, "server nonce", k.ServerNonce, h.ServerSecrets.Nonce)
}

// TestVectorSentinel: v1.json nonces end with XLHYBRID; v2.json ones do not. A
// client that fell back from version 2 must refuse a v1.json reply [downgrade].
func TestVectorSentinel(t *testing.T) {
	forEachHandshake(t, func(t *testing.T, f *vecFile, v Version, h *vecHandshake) {
		has := bytes.HasSuffix(h.ServerSecrets.Nonce, HybridSentinel)
		if has != (v == V1) {
			t.Fatalf("sentinel present: %v", has)
		}
		if v == V2 {
			return
		}
		hs := vectorHandshake(t, f, v, h)
		hs.Params.RefuseSentinel = true
		if _, err := hs.FinishReply(h.Reply); !errors.Is(err, ErrDowngrade) {
			t.Fatalf("fallback client accepted a sentinel reply: %v", err)
		}
	})
}

// vectorServer is the answering member of the vectors with a fresh replay cache.
func vectorServer(t *testing.T, f *vecFile, mode PQMode) *Server {
	return &Server{Identity: f.identity(t, "server"), Directory: f.directory(t), Mode: mode, Cache: NewReplayCache()}
}

// derandomisedEncaps recovers the message m that the vector's encapsulation used
// (K-PKE decryption of ct with dk_pke = kem_private[:1152]) and re-encapsulates
// deterministically, so even the v2 reply can be checked byte for byte.
func derandomisedEncaps(t *testing.T, h *vecHandshake) func(ek []byte) ([]byte, []byte, error) {
	var pke kyber768.PrivateKey
	pke.Unpack(h.KEMPrivate[:kyber768.PrivateKeySize])
	m := make([]byte, kyber768.PlaintextSize)
	pke.DecryptTo(m, h.KEMCiphertext)
	return func(ek []byte) ([]byte, []byte, error) {
		key, err := mlkem.NewEncapsulationKey768(ek)
		if err != nil {
			return nil, nil, err
		}
		return mlkemtest.Encapsulate768(key, m)
	}
}

func TestVectorServerAnswers(t *testing.T) {
	forEachHandshake(t, func(t *testing.T, f *vecFile, v Version, h *vecHandshake) {
		modes := []PQMode{Preferred, Required}
		if v == V1 {
			modes = []PQMode{Preferred, Disabled}
		}
		for _, mode := range modes {
			srv := vectorServer(t, f, mode)
			if v == V2 {
				srv.Encapsulate = derandomisedEncaps(t, h)
			}
			a, err := srv.ProcessHello(h.port(t), h.Hello, h.ServerNow, h.serverSecrets(t))
			if err != nil {
				t.Fatalf("mode %d: %v", mode, err)
			}
			checkAccepted(t, a, h)
		}
	})
}

func checkAccepted(t *testing.T, a *Accepted, h *vecHandshake) {
	t.Helper()
	mustEqual(t, "hello_plaintext (decrypted)", a.Plaintext, h.HelloPlaintext)
	mustEqual(t, "proof_plaintext (opened)", a.ProofPlaintext, h.ProofPlaintext)
	mustEqual(t, "reply_plaintext", a.ReplyPlaintext, h.ReplyPlaintext)
	mustEqual(t, "reply", a.Reply, h.Reply)
	checkVectorKeys(t, a.Keys, h)
	if h.Peer == nil && a.Peer != nil || h.Peer != nil && hex.EncodeToString(a.Peer) != *h.Peer {
		t.Errorf("peer %x, want %v", a.Peer, h.Peer)
	}
}

// TestVectorServerV2Random is the check v2.json prescribes: with real, randomised
// encapsulation the reply differs, but its header and first 96 plaintext bytes do
// not, and the client (with kem_private) must finish it with the server's keys.
func TestVectorServerV2Random(t *testing.T) {
	f := loadVectors(t, "v2.json")
	for i := range f.Handshakes {
		h := &f.Handshakes[i]
		t.Run(h.Name, func(t *testing.T) {
			a, err := vectorServer(t, f, Preferred).ProcessHello(h.port(t), h.Hello, h.ServerNow, h.serverSecrets(t))
			if err != nil {
				t.Fatal(err)
			}
			if len(a.Reply) != 1206 || !bytes.HasPrefix(a.Reply, []byte{0x58, 0x4c, 0x02, 0x02, 0x04, 0xb0}) {
				t.Fatalf("reply % x... of %d bytes", a.Reply[:6], len(a.Reply))
			}
			mustEqual(t, "reply_plaintext[:96]", a.ReplyPlaintext[:96], h.ReplyPlaintext[:96])
			keys, err := vectorHandshake(t, f, V2, h).FinishReply(a.Reply)
			if err != nil {
				t.Fatal(err)
			}
			mustEqual(t, "c2s (client vs server)", keys.C2S, a.Keys.C2S)
			mustEqual(t, "s2c (client vs server)", keys.S2C, a.Keys.S2C)
			if bytes.Equal(keys.C2S, h.C2SKey) {
				t.Error("keys equal the file's although the encapsulation was random")
			}
		})
	}
}

func TestVectorRecords(t *testing.T) {
	forEachHandshake(t, func(t *testing.T, f *vecFile, v Version, h *vecHandshake) {
		seal := map[string]*RecordCipher{}
		open := map[string]*RecordCipher{}
		for dir, key := range map[string][]byte{"client_to_server": h.C2SKey, "server_to_client": h.S2CKey} {
			seal[dir], _ = NewRecordCipher(key)
			open[dir], _ = NewRecordCipher(key)
		}
		types := map[string]byte{"data": ContentData, "close": ContentClose, "key_update": ContentKeyUpdate}
		for i, r := range h.Records {
			ctype, ok := types[r.Type]
			if !ok || seal[r.Direction] == nil {
				t.Fatalf("record %d: type %q direction %q", i, r.Type, r.Direction)
			}
			if seal[r.Direction].Seq() != r.Seq {
				t.Fatalf("record %d: seq %d, expected %d", i, r.Seq, seal[r.Direction].Seq())
			}
			rec, err := seal[r.Direction].Seal(ctype, r.Payload)
			if err != nil {
				t.Fatal(err)
			}
			mustEqual(t, "record", rec, r.Record)
			gotType, payload, err := open[r.Direction].Open(r.Record)
			if err != nil || gotType != ctype || !bytes.Equal(payload, r.Payload) {
				t.Errorf("record %d opens to type %d payload %x: %v", i, gotType, trunc(payload), err)
			}
		}
		if len(h.Records) != 6 {
			t.Errorf("%d records", len(h.Records))
		}
	})
}
