// This file checks that the server side refuses every entry of the vectors'
// "rejections" with the spec's reason, both when handed the whole message and when
// reading it from a stream, and tests the refusal paths the vectors do not cover.
package xlgo

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"
)

// rejectionServer is the server a rejection entry is sent to, with a fresh cache:
// Required when server_requires_hybrid is true, else Preferred (also in v1.json).
func rejectionServer(t *testing.T, f *vecFile, r *vecRejection) *Server {
	mode := Preferred
	if r.ServerRequiresHybrid != nil && *r.ServerRequiresHybrid {
		mode = Required
	}
	return vectorServer(t, f, mode)
}

// reasonOf extracts a refusal's reason; any other error is a test failure.
func reasonOf(t *testing.T, err error) string {
	t.Helper()
	var r *Refusal
	if !errors.As(err, &r) {
		t.Fatalf("not a refusal: %v", err)
	}
	return r.Reason
}

func TestVectorRejections(t *testing.T) {
	forEachFile(t, func(t *testing.T, f *vecFile, v Version) {
		if len(f.Rejections) == 0 {
			t.Fatal("no rejections")
		}
		for i := range f.Rejections {
			r := &f.Rejections[i]
			t.Run(r.Name, func(t *testing.T) {
				srv := rejectionServer(t, f, r)
				port := parseVecPort(t, r.Port)
				sec := f.Handshakes[0].serverSecrets(t)
				if r.AcceptFirst {
					if _, err := srv.ProcessHello(port, r.Hello, r.ServerNow, sec); err != nil {
						t.Fatalf("first delivery refused: %v", err)
					}
				}
				a, err := srv.ProcessHello(port, r.Hello, r.ServerNow, sec)
				if a != nil || err == nil {
					t.Fatal("accepted")
				}
				if got := reasonOf(t, err); got != r.ExpectedError {
					t.Errorf("reason %q, want %q (%v)", got, r.ExpectedError, err)
				}
			})
		}
	})
}

// streamReason is what a server reading from a connection reports for a hello:
// over a stream, "one byte short" is an EOF [io] and "one byte too many" is a
// whole hello followed by a byte that would be read as the first record.
var streamReason = map[string]string{"one byte short": "io", "one byte of the ML-KEM key missing": "io", "one byte too many": ""}

func TestVectorRejectionsFromStream(t *testing.T) {
	forEachFile(t, func(t *testing.T, f *vecFile, v Version) {
		for i := range f.Rejections {
			r := &f.Rejections[i]
			t.Run(r.Name, func(t *testing.T) {
				srv := rejectionServer(t, f, r)
				port := parseVecPort(t, r.Port)
				want, special := streamReason[r.Name]
				if !special {
					want = r.ExpectedError
				}
				if r.AcceptFirst {
					if _, err := streamProcess(srv, port, r); err != nil {
						t.Fatalf("first delivery refused: %v", err)
					}
				}
				_, err := streamProcess(srv, port, r)
				if want == "" {
					if err != nil {
						t.Fatalf("a hello followed by one more byte refused: %v", err)
					}
					return
				}
				if got := reasonOf(t, err); got != want {
					t.Errorf("reason %q, want %q (%v)", got, want, err)
				}
			})
		}
	})
}

func streamProcess(srv *Server, port Port, r *vecRejection) (*Accepted, error) {
	sec, err := NewServerSecrets()
	if err != nil {
		return nil, err
	}
	hello, err := srv.ReadHello(bytes.NewReader(r.Hello), port)
	if err != nil {
		return nil, err
	}
	return srv.ProcessHello(port, hello, r.ServerNow, sec)
}

// TestRejectionsNotInVectors covers refusal reasons the vectors have no entry for.
func TestRejectionsNotInVectors(t *testing.T) {
	f := loadVectors(t, "v1.json")
	h := &f.Handshakes[1] // cluster port
	for name, tc := range map[string]struct {
		mutate func(srv *Server, hello []byte) []byte
		reason string
	}{
		"not a member": {func(srv *Server, hello []byte) []byte {
			srv.Directory.Members = srv.Directory.Members[:1] // only the server itself
			return hello
		}, "not_member"},
		"wrong sk in the directory": {func(srv *Server, hello []byte) []byte {
			m := srv.Directory.Lookup("member")
			m.SKPub = srv.Directory.Lookup("server").SKPub
			return hello
		}, "bad_signature"},
		"version 2 hello to a version 1 server": {func(srv *Server, hello []byte) []byte {
			srv.Mode = Disabled
			hello[2] = 2
			return hello
		}, "unsupported_version"},
		"rsa_len of another key size": {func(srv *Server, hello []byte) []byte {
			hello[4], hello[5] = 1, 0x80
			return hello
		}, "bad_length"},
		"proof_len above the maximum": {func(srv *Server, hello []byte) []byte {
			hello[6], hello[7] = 0x02, 0x34 // 564
			return hello
		}, "bad_length"},
	} {
		t.Run(name, func(t *testing.T) {
			srv := vectorServer(t, f, Preferred)
			hello := tc.mutate(srv, append([]byte(nil), h.Hello...))
			_, err := srv.ProcessHello(PortCluster, hello, h.ServerNow, h.serverSecrets(t))
			if got := reasonOf(t, err); got != tc.reason {
				t.Errorf("reason %q, want %q", got, tc.reason)
			}
		})
	}
}

// TestLowOrderX25519 builds a client-port hello whose X25519 key is a low-order
// point: the server must refuse it at step 13 [undecryptable].
func TestLowOrderX25519(t *testing.T) {
	f := loadVectors(t, "v1.json")
	h := &f.Handshakes[0]
	srv := vectorServer(t, f, Preferred)
	s := h.clientSecrets(t, V1)
	p := HelloParams{Version: V1, Port: PortClient, CK: &srv.Identity.CK.PublicKey}
	hs, err := NewClientHandshake(p, s)
	if err != nil {
		t.Fatal(err)
	}
	pt := append([]byte(nil), hs.Plaintext...)
	copy(pt[74:], make([]byte, 32)) // u = 0 is a low-order point: the shared secret is all zero
	ct, err := rsaEncryptOAEP(&srv.Identity.CK.PublicKey, pt, V1.helloLabel())
	if err != nil {
		t.Fatal(err)
	}
	hello := concat(hs.Hello[:HeaderLen], ct)
	_, err = srv.ProcessHello(PortClient, hello, h.ServerNow, h.serverSecrets(t))
	if got := reasonOf(t, err); got != "undecryptable" {
		t.Errorf("reason %q", got)
	}
}

// TestReplayCacheGenerations exercises the rotation rules of "Freshness and replay".
func TestReplayCacheGenerations(t *testing.T) {
	c := NewReplayCache()
	n := func(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
	steps := []struct {
		nonce byte
		now   int64
		want  string
	}{
		{1, 1000, ""}, {1, 1000, "replayed"}, // generation floor(1000/60) = 16
		{1, 1019, "replayed"}, // still generation 16
		{2, 1020, ""},         // generation 17: 1 moves to the previous set
		{1, 1079, "replayed"}, // found in the previous set
		{3, 1015, ""},         // one generation behind counts as the newest (17)
		{2, 1080, "replayed"}, // generation 18: {2, 3} become the previous set
		{1, 1080, ""},         // 1 (generation 16) is forgotten: its hello is stale anyway
		{5, 1300, ""},         // generation 21, more than one on: both sets emptied
		{2, 1300, ""},         // 2 is forgotten
		{4, 100, ""},          // clock stepped back a long way: followed
		{5, 100, "replayed"},  // and what was remembered is kept one more generation
		{4, 130, "replayed"},  // generation 2: 4 in the previous set
		{5, 130, ""},          // 5 is gone after that one more generation
	}
	for i, s := range steps {
		if got := c.CheckAndRecord(n(s.nonce), s.now); got != s.want {
			t.Fatalf("step %d (nonce %d at %d): %q, want %q", i, s.nonce, s.now, got, s.want)
		}
	}
	// Only the first 16 bytes of the nonce are the key.
	other := append(n(4)[:16:16], n(9)[16:]...)
	if got := c.CheckAndRecord(other, 130); got != "replayed" {
		t.Fatalf("nonce differing after byte 16: %q", got)
	}
	full := &ReplayCache{capacity: 1, cur: map[[16]byte]struct{}{}, prev: map[[16]byte]struct{}{}}
	if full.CheckAndRecord(n(1), 0) != "" || full.CheckAndRecord(n(2), 0) != "replay_cache_full" {
		t.Fatal("a full generation must refuse")
	}
}

// TestCKHint checks the routing preamble against an independent computation.
func TestCKHint(t *testing.T) {
	f := loadVectors(t, "v1.json")
	srv := vectorServer(t, f, Preferred)
	pre, err := RoutePreamble(&srv.Identity.CK.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	der := pemDER(t, f.Identities["server"].CKPubPEM)
	sum := sha256.Sum256(der)
	mustEqual(t, "preamble", pre, concat([]byte{0x58, 0x4c, 1, 3}, sum[:8]))
	h := &f.Handshakes[0]
	stream := concat(pre, h.Hello)
	hello, err := srv.ReadHello(bytes.NewReader(stream), PortClient)
	if err != nil || !bytes.Equal(hello, h.Hello) {
		t.Fatalf("hello after a preamble: %v", err)
	}
	other, _ := RoutePreamble(srv.Directory.Lookup("member").CKPub)
	_, err = srv.ReadHello(bytes.NewReader(concat(other, h.Hello)), PortClient)
	if reasonOf(t, err) != "other_member" {
		t.Fatalf("preamble for another member: %v", err)
	}
	_, err = srv.ReadHello(bytes.NewReader(stream), PortCluster)
	if reasonOf(t, err) != "unexpected_type" {
		t.Fatalf("preamble on the cluster port: %v", err)
	}
}

func TestNodeIDAndKeys(t *testing.T) {
	for s, ok := range map[string]bool{
		"ead243c9df5fbfe8ca75651f701feb0d1782f019": true,
		"EAD243C9DF5FBFE8CA75651F701FEB0D1782F019": false,
		"ead243c9df5fbfe8ca75651f701feb0d1782f0":   false,
		hex.EncodeToString(make([]byte, 32)):       true,
		hex.EncodeToString(make([]byte, 24)):       false,
	} {
		if _, err := ParseNodeID(s); (err == nil) != ok {
			t.Errorf("ParseNodeID(%q): %v", s, err)
		}
	}
	f := loadVectors(t, "v1.json")
	pkcs1 := []byte("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
	if _, err := ParsePrivateKeyPEM(pkcs1); err == nil || !bytes.Contains([]byte(err.Error()), []byte("RSA PRIVATE KEY")) {
		t.Errorf("PKCS#1 label: %v", err)
	}
	lf := bytes.ReplaceAll([]byte(f.Identities["server"].CKPrivPEM), []byte("\r\n"), []byte("\n"))
	if _, err := ParsePrivateKeyPEM(lf); err != nil {
		t.Errorf("LF line ends: %v", err)
	}
}
