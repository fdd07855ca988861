// Command xlgo is the command line of this independent XLattice implementation:
// "xlgo connect" opens a session with a member (for instance the reference sidecar)
// and joins it to stdin/stdout; "xlgo serve" answers hellos on a client and a
// cluster port and echoes (or proxies to an upstream), so the reference client can
// be tested against this server.
package main

import (
	"crypto/rsa"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"time"

	"xlgo"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "connect":
		err = connect(os.Args[2:])
	case "serve":
		err = serve(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "xlgo:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: xlgo connect|serve [flags]  (xlgo connect -h for the flags)")
	os.Exit(2)
}

// connectFlags are the options of "xlgo connect".
type connectFlags struct {
	address, directory, member, ckFile, port, identityDir, version string
	noPreamble, verbose                                            bool
	timeout                                                        time.Duration
}

func parseConnect(args []string) (*connectFlags, error) {
	c := &connectFlags{}
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	fs.StringVar(&c.address, "address", "", "host:port to dial (default: the member's endpoint in the directory)")
	fs.StringVar(&c.directory, "directory", "", "member directory file (JSON)")
	fs.StringVar(&c.member, "member", "", "the member: name or NodeID (hex) in the directory")
	fs.StringVar(&c.ckFile, "ck", "", "the member's public ck (SPKI PEM file), instead of the directory's")
	fs.StringVar(&c.port, "port", "client", "client or cluster")
	fs.StringVar(&c.identityDir, "identity-dir", "", "own identity (node-id, sk.pem, ck.pem); needed for the cluster port")
	fs.StringVar(&c.version, "version", "auto", "protocol version: 1, 2, or auto (2, falling back to 1 with sentinel check)")
	fs.BoolVar(&c.noPreamble, "no-preamble", false, "do not send the routing preamble on the client port")
	fs.BoolVar(&c.verbose, "v", false, "report the negotiated version and the server nonce on stderr")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "handshake timeout")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if c.member == "" && fs.NArg() == 1 {
		c.member = fs.Arg(0)
	}
	return c, nil
}

func connect(args []string) error {
	c, err := parseConnect(args)
	if err != nil {
		return err
	}
	cfg, err := c.dialConfig()
	if err != nil {
		return err
	}
	sess, err := xlgo.Dial(cfg)
	if err != nil {
		return err
	}
	defer sess.Close()
	if c.verbose {
		fmt.Fprintf(os.Stderr, "xlgo: version %d session, server nonce %x\n", sess.Version, sess.Keys.ServerNonce)
	}
	return pipe(sess, os.Stdin, os.Stdout)
}

// dialConfig resolves the member's ck and address from the flags.
func (c *connectFlags) dialConfig() (xlgo.DialConfig, error) {
	cfg := xlgo.DialConfig{Address: c.address, Timeout: c.timeout, Preamble: !c.noPreamble}
	var err error
	if cfg.Mode, err = versionMode(c.version); err != nil {
		return cfg, err
	}
	if cfg.Port, err = parsePort(c.port); err != nil {
		return cfg, err
	}
	if cfg.CK, err = c.resolveMember(&cfg); err != nil {
		return cfg, err
	}
	if cfg.Port == xlgo.PortCluster {
		if c.identityDir == "" {
			return cfg, errors.New("the cluster port needs --identity-dir")
		}
		if cfg.Member, err = xlgo.LoadIdentity(c.identityDir); err != nil {
			return cfg, err
		}
	}
	if cfg.Address == "" {
		return cfg, errors.New("no address: give --address or a directory endpoint")
	}
	return cfg, nil
}

// resolveMember finds the ck (from --ck or the directory) and, if no address was
// given, the member's endpoint for the chosen port.
func (c *connectFlags) resolveMember(cfg *xlgo.DialConfig) (*rsa.PublicKey, error) {
	if c.ckFile != "" {
		data, err := os.ReadFile(c.ckFile)
		if err != nil {
			return nil, err
		}
		return xlgo.ParsePublicKeyPEM(data)
	}
	if c.directory == "" || c.member == "" {
		return nil, errors.New("give --ck, or --directory and --member")
	}
	dir, err := xlgo.LoadDirectory(c.directory)
	if err != nil {
		return nil, err
	}
	m := dir.Lookup(c.member)
	if m == nil {
		return nil, fmt.Errorf("no member %q in %s", c.member, c.directory)
	}
	if cfg.Address == "" {
		cfg.Address = map[xlgo.Port]string{xlgo.PortClient: m.ClientEndpoint, xlgo.PortCluster: m.ClusterEndpoint}[cfg.Port]
	}
	return m.CKPub, nil
}

func versionMode(s string) (xlgo.PQMode, error) {
	switch s {
	case "1":
		return xlgo.Disabled, nil
	case "2":
		return xlgo.Required, nil
	case "auto":
		return xlgo.Preferred, nil
	}
	return 0, fmt.Errorf("--version %q: 1, 2 or auto", s)
}

func parsePort(s string) (xlgo.Port, error) {
	switch s {
	case "client":
		return xlgo.PortClient, nil
	case "cluster":
		return xlgo.PortCluster, nil
	}
	return 0, fmt.Errorf("--port %q: client or cluster", s)
}

// pipe sends in to the session (then a close record) and copies the session to
// out until the peer's close record. A truncated stream is an error.
func pipe(sess *xlgo.Session, in io.Reader, out io.Writer) error {
	sent := make(chan error, 1)
	go func() {
		_, err := io.Copy(sess, in)
		if err == nil {
			err = sess.CloseWrite()
		}
		sent <- err
	}()
	if _, err := io.Copy(out, sess); err != nil {
		return err
	}
	select { // the peer has closed: do not wait for a stdin that never ends
	case err := <-sent:
		return err
	default:
		return nil
	}
}

// serve runs "xlgo serve".
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	identityDir := fs.String("identity-dir", "", "own identity directory")
	directory := fs.String("directory", "", "member directory file (JSON)")
	clientListen := fs.String("client-listen", "127.0.0.1:0", "client port address")
	clusterListen := fs.String("cluster-listen", "127.0.0.1:0", "cluster port address")
	mode := fs.String("post-quantum", "Preferred", "Preferred, Required or Disabled")
	upstream := fs.String("upstream", "", "plaintext upstream (default: echo)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	srv, err := newServer(*identityDir, *directory, *mode)
	if err != nil {
		return err
	}
	handle := xlgo.Echo
	if *upstream != "" {
		handle = func(s *xlgo.Session) { proxy(s, *upstream) }
	}
	errs := make(chan error, 2)
	for port, addr := range map[xlgo.Port]string{xlgo.PortClient: *clientListen, xlgo.PortCluster: *clusterListen} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		fmt.Printf("%s port listening on %s\n", port, ln.Addr())
		go func() { errs <- srv.Serve(ln, port, handle, func(e error) { log.Printf("%s port: %v", port, e) }) }()
	}
	return <-errs
}

func newServer(identityDir, directory, mode string) (*xlgo.Server, error) {
	id, err := xlgo.LoadIdentity(identityDir)
	if err != nil {
		return nil, err
	}
	dir, err := xlgo.LoadDirectory(directory)
	if err != nil {
		return nil, err
	}
	m, err := xlgo.ParsePQMode(mode)
	if err != nil {
		return nil, err
	}
	return &xlgo.Server{Identity: id, Directory: dir, Mode: m, Cache: xlgo.NewReplayCache()}, nil
}

// proxy joins a session to a plaintext upstream connection.
func proxy(s *xlgo.Session, upstream string) {
	defer s.Close()
	up, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	defer up.Close()
	go func() {
		if _, err := io.Copy(up, s); err == nil {
			up.(*net.TCPConn).CloseWrite()
		} else {
			up.(*net.TCPConn).SetLinger(0) // pass a truncation on as a reset
			up.Close()
		}
	}()
	if _, err := io.Copy(s, up); err == nil {
		s.CloseWrite()
	}
	io.Copy(io.Discard, s)
}
