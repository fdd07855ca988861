// This file runs this package's client against its own server over loopback TCP:
// both ports, every version policy, the fallback and its downgrade detection, the
// silent reset on refusal, and truncation detection.
package xlgo

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// testCluster is the vectors' server identity serving both ports on loopback.
type testCluster struct {
	srv             *Server
	member          *Identity
	client, cluster string // addresses
	refusals        chan error
}

func startServer(t *testing.T, mode PQMode, handle func(*Session)) *testCluster {
	f := loadVectors(t, "v1.json")
	tc := &testCluster{srv: vectorServer(t, f, mode), member: f.identity(t, "member"), refusals: make(chan error, 16)}
	for _, port := range []Port{PortClient, PortCluster} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go tc.srv.Serve(ln, port, handle, func(err error) { tc.refusals <- err })
		if port == PortClient {
			tc.client = ln.Addr().String()
		} else {
			tc.cluster = ln.Addr().String()
		}
	}
	return tc
}

func (tc *testCluster) config(port Port, mode PQMode) DialConfig {
	cfg := DialConfig{Port: port, CK: &tc.srv.Identity.CK.PublicKey, Mode: mode, Preamble: true, Timeout: 5 * time.Second, Address: tc.client}
	if port == PortCluster {
		cfg.Member, cfg.Address = tc.member, tc.cluster
	}
	return cfg
}

// echoRoundTrip sends msg, half-closes, and reads everything back.
func echoRoundTrip(t *testing.T, s *Session, msg []byte) []byte {
	t.Helper()
	defer s.Close()
	go func() {
		s.Write(msg)
		s.CloseWrite()
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	return got
}

func TestLoopbackSessions(t *testing.T) {
	msg := bytes.Repeat([]byte("0123456789abcdef"), 3000) // 48000 bytes: several records
	for _, srvMode := range []PQMode{Preferred, Required, Disabled} {
		tc := startServer(t, srvMode, Echo)
		for _, cliMode := range []PQMode{Preferred, Required, Disabled} {
			for _, port := range []Port{PortClient, PortCluster} {
				s, err := Dial(tc.config(port, cliMode))
				incompatible := srvMode == Required && cliMode == Disabled || srvMode == Disabled && cliMode == Required
				if incompatible {
					if err == nil {
						t.Errorf("server %d client %d %s: session opened", srvMode, cliMode, port)
						s.Close()
					}
					continue
				}
				if err != nil {
					t.Fatalf("server %d client %d %s: %v", srvMode, cliMode, port, err)
				}
				wantV := map[bool]Version{true: V2, false: V1}[srvMode != Disabled && cliMode != Disabled]
				if s.Version != wantV {
					t.Errorf("server %d client %d: version %d", srvMode, cliMode, s.Version)
				}
				if got := echoRoundTrip(t, s, msg); !bytes.Equal(got, msg) {
					t.Errorf("echo of %d bytes returned %d", len(msg), len(got))
				}
			}
		}
	}
}

// TestDowngradeDetected drops every version 2 hello in the path: the client falls
// back, finds the sentinel in the version 1 reply, and refuses [downgrade].
func TestDowngradeDetected(t *testing.T) {
	tc := startServer(t, Preferred, Echo)
	proxy := dropV2Proxy(t, tc.client)
	cfg := tc.config(PortClient, Preferred)
	cfg.Address, cfg.Preamble = proxy, false
	if s, err := Dial(cfg); !errors.Is(err, ErrDowngrade) {
		t.Fatalf("expected a downgrade error, got %v (session %v)", err, s != nil)
	}
	cfg.Mode = Disabled // a version 1 client ignores the sentinel
	s, err := Dial(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(s.Keys.ServerNonce, HybridSentinel) {
		t.Error("no sentinel in a version 2 server's version 1 reply")
	}
	if got := echoRoundTrip(t, s, []byte("hi")); string(got) != "hi" {
		t.Errorf("echo %q", got)
	}
}

// dropV2Proxy forwards connections to target but resets those whose first header
// says version 2, as an attacker forcing a fallback would.
func dropV2Proxy(t *testing.T, target string) string {
	return serveLoopback(t, func(c net.Conn) { forwardUnlessV2(c, target) })
}

func forwardUnlessV2(c net.Conn, target string) {
	first, err := readHelloHeader(c)
	if err != nil || first[len(first)-HeaderLen+2] == 2 {
		reset(c)
		return
	}
	up, err := net.Dial("tcp", target)
	if err != nil {
		reset(c)
		return
	}
	up.Write(first)
	go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
	io.Copy(c, up)
	c.Close()
	up.Close()
}

// readHelloHeader reads the hello's header, and the routing preamble before it
// if there is one (its version byte is 01 whatever the hello's version).
func readHelloHeader(c net.Conn) ([]byte, error) {
	hdr := make([]byte, HeaderLen)
	if _, err := io.ReadFull(c, hdr); err != nil || hdr[3] != TypeRoute {
		return hdr, err
	}
	rest := make([]byte, RouteLen-HeaderLen+HeaderLen)
	_, err := io.ReadFull(c, rest)
	return append(hdr, rest...), err
}

// TestRefusalSendsNothing: a refused hello gets no byte back, then a reset.
func TestRefusalSendsNothing(t *testing.T) {
	tc := startServer(t, Preferred, Echo)
	f := loadVectors(t, "v1.json")
	conn, err := net.Dial("tcp", tc.client)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write(f.Handshakes[0].Hello) // its timestamp is 2026-01-01: stale now, or replayed
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := conn.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read %d bytes, %v; want nothing, then a reset", n, err)
	}
	select {
	case r := <-tc.refusals:
		if reason := reasonOf(t, r); reason != "clock_skew" {
			t.Errorf("refused for %q", reason)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no refusal reported")
	}
}

// TestTruncationDetected: a peer that closes TCP without a close record causes an
// error, never a clean end of stream.
func TestTruncationDetected(t *testing.T) {
	tc := startServer(t, Preferred, func(s *Session) {
		s.Write([]byte("partial"))
		s.Close() // no close record
	})
	s, err := Dial(tc.config(PortClient, Preferred))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := io.ReadAll(s)
	if string(got) != "partial" || recordReason(err) != "truncated" {
		t.Fatalf("read %q, %v", got, err)
	}
}
