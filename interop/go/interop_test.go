// This file is the interop test against the reference implementation (the
// binary named by $XLATTICE_BIN): this package's client against "xlattice run" on
// both ports in both versions, the sidecar's refusal reasons compared with this
// package's server on the same crafted hellos, and the reference client
// ("xlattice connect") against this package's server.
package xlgo

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// interopEnv is what the subtests share: identities minted by the reference, the
// directory naming them, and a sidecar serving "srv".
type interopEnv struct {
	bin, tmp, dirPath string
	srv, mem          *Identity
	dir               *Directory
	sc                *sidecar
}

func setupInterop(t *testing.T) *interopEnv {
	bin := referenceBinary(t)
	e := &interopEnv{bin: bin, tmp: t.TempDir()}
	// srv: 256-bit NodeID, RSA-2048; mem: 160-bit NodeID, RSA-3072 (a non-default proof length).
	e.srv = keygen(t, bin, filepath.Join(e.tmp, "srv"))
	e.mem = keygen(t, bin, filepath.Join(e.tmp, "mem"), "--node-id-bits", "160", "--rsa-bits", "3072")
	clusterAddr, clientAddr := freeAddr(t), freeAddr(t)
	e.dirPath = filepath.Join(e.tmp, "directory.json")
	e.dir = writeDirectory(t, e.dirPath, dirMember(t, "srv", e.srv, clusterAddr, clientAddr), dirMember(t, "mem", e.mem, "", ""))
	e.sc = startSidecar(t, bin, filepath.Join(e.tmp, "srv"), e.dirPath, "Preferred", clusterAddr, clientAddr)
	return e
}

func (e *interopEnv) config(port Port, mode PQMode, preamble bool) DialConfig {
	cfg := DialConfig{CK: &e.srv.CK.PublicKey, Port: port, Mode: mode, Preamble: preamble, Timeout: 10 * time.Second, Address: e.sc.client}
	if port == PortCluster {
		cfg.Member, cfg.Address = e.mem, e.sc.cluster
	}
	return cfg
}

func TestInteropReferenceSidecar(t *testing.T) {
	e := setupInterop(t)
	t.Run("sessions", func(t *testing.T) { testSidecarSessions(t, e) })
	t.Run("downgrade", func(t *testing.T) { testSidecarDowngrade(t, e) })
	t.Run("refusals", func(t *testing.T) { testSidecarRefusals(t, e) })
	t.Run("required", func(t *testing.T) { testSidecarRequired(t, e) })
	t.Run("reference client", func(t *testing.T) { testReferenceClient(t, e) })
	t.Run("xlgo command", func(t *testing.T) { testXlgoCommand(t, e) })
}

// testXlgoCommand builds cmd/xlgo and runs "xlgo connect" against the sidecar.
func testXlgoCommand(t *testing.T, e *interopEnv) {
	bin := filepath.Join(t.TempDir(), "xlgo")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/xlgo").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, version := range []string{"1", "2", "auto"} {
		for _, port := range []string{"client", "cluster"} {
			args := []string{"connect", "-v", "--directory", e.dirPath, "--member", "srv", "--port", port, "--version", version}
			if port == "cluster" {
				args = append(args, "--identity-dir", filepath.Join(e.tmp, "mem"))
			}
			cmd := exec.Command(bin, args...)
			cmd.Stdin = strings.NewReader("via the command line")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil || string(out) != port+":via the command line" {
				t.Errorf("xlgo connect --port %s --version %s: %v %q\n%s", port, version, err, out, stderr.String())
			}
			wantV := map[string]string{"1": "version 1", "2": "version 2", "auto": "version 2"}[version]
			if !strings.Contains(stderr.String(), wantV) {
				t.Errorf("xlgo reported %q, want %s", stderr.String(), wantV)
			}
		}
	}
}

// testSidecarSessions opens sessions on both ports in every version and checks
// the echo, the version, and the sentinel rule of "Choosing a version".
func testSidecarSessions(t *testing.T, e *interopEnv) {
	msg := bytes.Repeat([]byte("xlattice interop "), 4000) // 68000 bytes: several records each way
	for _, port := range []Port{PortClient, PortCluster} {
		for _, mode := range []PQMode{Disabled, Required, Preferred} {
			for _, preamble := range []bool{true, false} {
				if port == PortCluster && preamble {
					continue // the preamble is a client-port thing
				}
				name := fmt.Sprintf("%s/mode%d/preamble=%v", port, mode, preamble)
				t.Run(name, func(t *testing.T) { sidecarEcho(t, e.config(port, mode, preamble), msg) })
			}
		}
	}
}

func sidecarEcho(t *testing.T, cfg DialConfig, msg []byte) {
	s, err := Dial(cfg)
	if err != nil {
		t.Fatal(err)
	}
	wantV := map[PQMode]Version{Disabled: V1, Required: V2, Preferred: V2}[cfg.Mode]
	if s.Version != wantV {
		t.Errorf("version %d, want %d", s.Version, wantV)
	}
	sentinel := bytes.HasSuffix(s.Keys.ServerNonce, HybridSentinel)
	if sentinel != (s.Version == V1) {
		t.Errorf("version %d reply: sentinel %v (a version 2 server sets it in version 1 replies only)", s.Version, sentinel)
	}
	want := append([]byte(cfg.Port.String()+":"), msg...)
	if got := echoRoundTrip(t, s, msg); !bytes.Equal(got, want) {
		t.Errorf("echo: got %d bytes %q..., want %d", len(got), trunc(got), len(want))
	}
}

// testSidecarDowngrade: a version 1 hello sent as a fallback gets a sentinel reply,
// which a version 2 client refuses; a path that drops version 2 hellos is caught.
func testSidecarDowngrade(t *testing.T, e *interopEnv) {
	for _, port := range []Port{PortClient, PortCluster} {
		if _, err := DialVersion(e.config(port, Preferred, true), V1, true); !errors.Is(err, ErrDowngrade) {
			t.Errorf("%s port: fallback hello answered without a downgrade error: %v", port, err)
		}
	}
	cfg := e.config(PortClient, Preferred, true)
	cfg.Address = dropV2Proxy(t, e.sc.client)
	if _, err := Dial(cfg); !errors.Is(err, ErrDowngrade) {
		t.Errorf("dropping version 2 hellos in the path: %v", err)
	}
}

// probe is a crafted hello sent raw to the sidecar; the sidecar must send nothing
// and reset, and its metric reason must equal this package's server's reason.
type probe struct {
	name  string
	port  Port
	bytes func(t *testing.T) []byte
	twice bool // send once (it must be answered), then again
}

func testSidecarRefusals(t *testing.T, e *interopEnv) {
	mine := &Server{Identity: e.srv, Directory: e.dir, Mode: Preferred, Cache: NewReplayCache()}
	for _, p := range e.probes() {
		t.Run(p.name, func(t *testing.T) {
			hello := p.bytes(t)
			if p.twice {
				if !sendRaw(t, e.sc.addr(p.port), hello) {
					t.Fatal("first delivery not answered")
				}
				mine.ProcessHello(p.port, hello, time.Now().Unix(), mustSecrets(t))
			}
			before := e.sc.handshakeCounts(t)
			if sendRaw(t, e.sc.addr(p.port), hello) {
				t.Fatal("the sidecar answered")
			}
			ref := e.sc.newReason(t, before)
			_, err := mine.ProcessHello(p.port, hello, time.Now().Unix(), mustSecrets(t))
			want := fmt.Sprintf(`{port="%s",result="error",reason="%s"}`, p.port, reasonOf(t, err))
			if ref != want {
				t.Errorf("reference %s, this implementation %s", ref, want)
			}
		})
	}
}

func (sc *sidecar) addr(p Port) string {
	if p == PortCluster {
		return sc.cluster
	}
	return sc.client
}

func mustSecrets(t *testing.T) *ServerSecrets {
	s, err := NewServerSecrets()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sendRaw sends bytes on a fresh connection and reports whether anything came
// back. A refusal must be silence, then a reset (or close).
func sendRaw(t *testing.T, addr string, b []byte) bool {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(b)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n == 0 && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("refusal ended with %v, not a reset (section \"Server processing of a hello\")", err)
	}
	return n > 0
}

// hello builds a hello to the sidecar, then lets mutate change its secrets first.
func (e *interopEnv) hello(t *testing.T, v Version, port Port, member *Identity, mutate func(*ClientSecrets)) *ClientHandshake {
	s, err := NewClientSecrets(v, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(s)
	}
	hs, err := NewClientHandshake(HelloParams{Version: v, Port: port, CK: &e.srv.CK.PublicKey, Member: member}, s)
	if err != nil {
		t.Fatal(err)
	}
	return hs
}

// stranger is a member identity that is not in the directory.
func stranger(t *testing.T, nodeID []byte) *Identity {
	sk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if nodeID == nil {
		nodeID = make([]byte, 20)
		rand.Read(nodeID)
	}
	return &Identity{NodeID: nodeID, SK: sk, CK: sk}
}

func (e *interopEnv) probes() []probe {
	hb := func(v Version, port Port, m *Identity, mut func(*ClientSecrets), edit func([]byte) []byte) func(t *testing.T) []byte {
		return func(t *testing.T) []byte {
			b := append([]byte(nil), e.hello(t, v, port, m, mut).Hello...)
			if edit != nil {
				b = edit(b)
			}
			return b
		}
	}
	flip := func(i int) func([]byte) []byte {
		return func(b []byte) []byte { b[i] ^= 1; return b }
	}
	stale := func(s *ClientSecrets) { s.Timestamp -= 100 }
	ekOff := HeaderLen + e.srv.CK.Size()
	return []probe{
		{"bad_magic", PortClient, func(*testing.T) []byte { return []byte("GET / HTTP/1.1\r\n\r\n") }, false},
		{"version 3", PortClient, hb(V1, PortClient, nil, nil, func(b []byte) []byte { b[2] = 3; return b }), false},
		{"reply type", PortClient, hb(V1, PortClient, nil, nil, func(b []byte) []byte { b[3] = 2; return b }), false},
		{"v1 clock_skew", PortClient, hb(V1, PortClient, nil, stale, nil), false},
		{"v2 clock_skew", PortCluster, hb(V2, PortCluster, e.mem, stale, nil), false},
		{"v1 replayed", PortClient, hb(V1, PortClient, nil, nil, nil), true},
		{"v2 replayed cluster", PortCluster, hb(V2, PortCluster, e.mem, nil, nil), true},
		{"v1 undecryptable", PortClient, hb(V1, PortClient, nil, nil, flip(HeaderLen+20)), false},
		{"v2 undecryptable", PortClient, hb(V2, PortClient, nil, nil, flip(HeaderLen+20)), false},
		{"v2 bad_kem_key", PortClient, hb(V2, PortClient, nil, nil, func(b []byte) []byte {
			b[ekOff], b[ekOff+1] = 0xff, b[ekOff+1]|0x0f
			return b
		}), false},
		{"v2 ek flipped on the cluster port", PortCluster, hb(V2, PortCluster, e.mem, nil, flip(ekOff+100)), false},
		{"v1 bad_proof", PortCluster, hb(V1, PortCluster, e.mem, nil, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), false},
		{"v1 not_member", PortCluster, hb(V1, PortCluster, stranger(nil, nil), nil, nil), false},
		{"v2 bad_signature", PortCluster, hb(V2, PortCluster, stranger(nil, e.mem.NodeID), nil, nil), false},
		{"client-port hello on the cluster port", PortCluster, hb(V1, PortClient, nil, nil, nil), false},
		{"cluster-port hello on the client port", PortClient, hb(V2, PortCluster, e.mem, nil, nil), false},
		{"v1 wrong_port", PortClient, hb(V1, PortCluster, e.mem, nil, func(b []byte) []byte {
			b = b[:HeaderLen+e.srv.CK.Size()] // proof stripped
			b[6], b[7] = 0, 0
			return b
		}), false},
		{"preamble on the cluster port", PortCluster, func(t *testing.T) []byte {
			pre, _ := RoutePreamble(&e.srv.CK.PublicKey)
			return concat(pre, e.hello(t, V1, PortCluster, e.mem, nil).Hello)
		}, false},
	}
}

// testSidecarRequired: a sidecar with postQuantum Required refuses version 1
// [classical_refused] and serves version 2.
func testSidecarRequired(t *testing.T, e *interopEnv) {
	sc := startSidecar(t, e.bin, filepath.Join(e.tmp, "srv"), e.dirPath, "Required", freeAddr(t), freeAddr(t))
	cfg := e.config(PortClient, Disabled, true)
	cfg.Address = sc.client
	before := sc.handshakeCounts(t)
	if _, err := Dial(cfg); !errors.Is(err, ErrNoReply) {
		t.Fatalf("version 1 session with a Required sidecar: %v", err)
	}
	if got := sc.newReason(t, before); got != `{port="client",result="error",reason="classical_refused"}` {
		t.Errorf("reason %s", got)
	}
	for _, mode := range []PQMode{Required, Preferred} {
		cfg.Mode = mode
		sidecarEcho(t, cfg, []byte("pq only"))
	}
}

// testReferenceClient runs "xlattice connect" against this package's server
// (serving as "mem"), on both ports, in every version policy.
func testReferenceClient(t *testing.T, e *interopEnv) {
	for _, srvMode := range []PQMode{Preferred, Disabled} {
		versions := make(chan *Session, 8)
		srv := &Server{Identity: e.mem, Directory: e.dir, Mode: srvMode, Cache: NewReplayCache()}
		addrs := serveBoth(t, srv, func(s *Session) { versions <- s; Echo(s) })
		for _, pq := range []string{"Preferred", "Required", "Disabled"} {
			for _, port := range []Port{PortClient, PortCluster} {
				t.Run(fmt.Sprintf("server%d/%s/%s", srvMode, pq, port), func(t *testing.T) {
					out, err := referenceConnect(t, e, addrs[port], port, pq, "from the reference")
					if srvMode == Disabled && pq == "Required" {
						if err == nil {
							t.Errorf("Required client opened a session with a version 1 server: %q", out)
						}
						return
					}
					if err != nil || out != "from the reference" {
						t.Fatalf("xlattice connect: %v, output %q", err, out)
					}
					checkReferenceSession(t, <-versions, srvMode, pq, port, e.srv.NodeID)
				})
			}
		}
	}
	t.Run("downgrade", func(t *testing.T) { testReferenceClientDowngrade(t, e) })
}

func checkReferenceSession(t *testing.T, s *Session, srvMode PQMode, pq string, port Port, srvID []byte) {
	wantV := V2
	if srvMode == Disabled || pq == "Disabled" {
		wantV = V1
	}
	if s.Version != wantV {
		t.Errorf("session version %d, want %d", s.Version, wantV)
	}
	if port == PortCluster && !bytes.Equal(s.Peer, srvID) {
		t.Errorf("peer %x, want %x", s.Peer, srvID)
	}
}

// testReferenceClientDowngrade: with version 2 hellos dropped in the path, the
// reference client must not open a session with a version 2 server.
func testReferenceClientDowngrade(t *testing.T, e *interopEnv) {
	srv := &Server{Identity: e.mem, Directory: e.dir, Mode: Preferred, Cache: NewReplayCache()}
	addrs := serveBoth(t, srv, Echo)
	out, err := referenceConnect(t, e, dropV2Proxy(t, addrs[PortClient]), PortClient, "Preferred", "x")
	if err == nil {
		t.Fatalf("session opened through a path that drops version 2: %q", out)
	}
	if !strings.Contains(err.Error(), "downgrade") {
		t.Errorf("the reference client refused, but not as a downgrade: %v", err)
	}
}

// serveBoth serves srv's client and cluster ports on loopback.
func serveBoth(t *testing.T, srv *Server, handle func(*Session)) map[Port]string {
	addrs := map[Port]string{}
	for _, port := range []Port{PortClient, PortCluster} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go srv.Serve(ln, port, handle, func(err error) { t.Logf("%s port refused: %v", port, err) })
		addrs[port] = ln.Addr().String()
	}
	return addrs
}

// referenceConnect runs "xlattice connect mem" with stdin and returns its stdout.
func referenceConnect(t *testing.T, e *interopEnv, addr string, port Port, pq, stdin string) (string, error) {
	args := []string{"connect", "--directory", e.dirPath, "--address", addr, "--port", port.String(), "--post-quantum", pq, "--timeout", "10s"}
	if port == PortCluster {
		args = append(args, "--identity-dir", filepath.Join(e.tmp, "srv"))
	}
	cmd := exec.Command(e.bin, append(args, "mem")...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return stdout.String(), fmt.Errorf("%v: %s", err, stderr.String())
		}
		return stdout.String(), nil
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		return stdout.String(), fmt.Errorf("xlattice connect hung: %s", stderr.String())
	}
}
