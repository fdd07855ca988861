// This file holds the helpers of the interop test against the reference sidecar:
// finding the binary, minting identities with "xlattice keygen", writing the
// member directory, running "xlattice run" (always killed at the end), plaintext
// echo upstreams, and reading the sidecar's refusal reasons from /metrics.
package xlgo

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// referenceBinary returns $XLATTICE_BIN. Unset, the test fails unless
// XLATTICE_INTEROP_SKIP=1, so that nobody counts a skip as a pass.
func referenceBinary(t *testing.T) string {
	bin := os.Getenv("XLATTICE_BIN")
	if bin == "" {
		if os.Getenv("XLATTICE_INTEROP_SKIP") == "1" {
			t.Skip("XLATTICE_INTEROP_SKIP=1: interop with the reference sidecar NOT tested")
		}
		t.Fatal("XLATTICE_BIN is not set: set it to the reference binary (e.g. ../../target/debug/xlattice), " +
			"or set XLATTICE_INTEROP_SKIP=1 to skip the interop test explicitly")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("XLATTICE_BIN=%s: %v", bin, err)
	}
	return bin
}

// keygen mints an identity with the reference and loads it with this package.
func keygen(t *testing.T, bin, dir string, args ...string) *Identity {
	out, err := exec.Command(bin, append([]string{"keygen", "--out", dir}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	id, err := LoadIdentity(dir)
	if err != nil {
		t.Fatalf("loading the reference's identity files: %v", err)
	}
	return id
}

// dirMember is one record of the directory the test writes.
func dirMember(t *testing.T, name string, id *Identity, clusterEP, clientEP string) MemberFile {
	sk, err := PublicPEM(&id.SK.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ck, _ := PublicPEM(&id.CK.PublicKey)
	return MemberFile{Name: name, NodeID: fmt.Sprintf("%x", id.NodeID), SK: sk, CK: ck, ClusterEndpoint: clusterEP, ClientEndpoint: clientEP}
}

// writeDirectory writes the JSON form of the member directory and checks it parses.
func writeDirectory(t *testing.T, path string, members ...MemberFile) *Directory {
	data, err := json.MarshalIndent(DirectoryFile{Cluster: "default/interop", Members: members}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := ParseDirectory(data)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// freeAddr finds a free loopback port (closed again: a small race is accepted).
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startEcho runs a plaintext upstream that writes prefix, then echoes, then
// half-closes when its client does.
func startEcho(t *testing.T, prefix string) string {
	return serveLoopback(t, func(c net.Conn) {
		defer c.Close()
		c.Write([]byte(prefix))
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
}

// serveLoopback listens on a free loopback port until the test ends, handing each
// connection to handle on its own goroutine; it returns the address.
func serveLoopback(t *testing.T, handle func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().String()
}

// sidecar is a running "xlattice run".
type sidecar struct {
	client, cluster, admin string
	logs                   *syncBuffer
}

// syncBuffer collects a process's output for failure messages.
type syncBuffer struct {
	mu chan struct{}
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu <- struct{}{}
	defer func() { <-s.mu }()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu <- struct{}{}
	defer func() { <-s.mu }()
	return s.b.String()
}

// startSidecar runs the reference sidecar on loopback; it is killed (its whole
// process group) when the test ends.
func startSidecar(t *testing.T, bin, identityDir, directory, mode, clusterAddr, clientAddr string) *sidecar {
	sc := &sidecar{client: clientAddr, cluster: clusterAddr, admin: freeAddr(t), logs: &syncBuffer{mu: make(chan struct{}, 1)}}
	port := func(a string) string { _, p, _ := net.SplitHostPort(a); return p }
	cmd := exec.Command(bin, "run", "--identity-dir", identityDir, "--directory", directory,
		"--listen-host", "127.0.0.1", "--cluster-port", port(clusterAddr), "--client-port", port(clientAddr),
		"--cluster-upstream", startEcho(t, "cluster:"), "--client-upstream", startEcho(t, "client:"),
		"--connect-listen", freeAddr(t), "--admin-listen", sc.admin, "--post-quantum", mode,
		"--expected-directory-version", filepath.Join(filepath.Dir(directory), "no-such-file"))
	cmd.Stdout, cmd.Stderr = sc.logs, sc.logs
	// Its own process group, killed whole at cleanup; Pdeathsig in case the test
	// binary itself dies (a go test timeout skips cleanups).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() {
			t.Logf("sidecar (%s) output:\n%s", mode, sc.logs.String())
		}
	})
	sc.waitReady(t)
	return sc
}

// waitReady polls /readyz until the sidecar answers 200.
func (sc *sidecar) waitReady(t *testing.T) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + sc.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("sidecar not ready after 60 s:\n%s", sc.logs.String())
}

// handshakeCounts reads xlattice_sidecar_handshakes_total from /metrics, keyed by
// its label set.
func (sc *sidecar) handshakeCounts(t *testing.T) map[string]float64 {
	resp, err := http.Get("http://" + sc.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	counts := map[string]float64{}
	sc2 := bufio.NewScanner(resp.Body)
	for sc2.Scan() {
		line := sc2.Text()
		if !strings.HasPrefix(line, "xlattice_sidecar_handshakes_total{") {
			continue
		}
		var v float64
		i := strings.LastIndexByte(line, ' ')
		fmt.Sscan(line[i+1:], &v)
		counts[line[len("xlattice_sidecar_handshakes_total"):i]] = v
	}
	return counts
}

// newReason waits for one refusal counter to grow past before and returns
// its label set, e.g. {port="client",result="error",reason="clock_skew"}.
func (sc *sidecar) newReason(t *testing.T, before map[string]float64) string {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for k, v := range sc.handshakeCounts(t) {
			// Only refusals: an earlier accepted hello may be counted late.
			if v > before[k] && strings.Contains(k, `result="error"`) {
				return k
			}
		}
	}
	return "(no counter moved)"
}
