// This file runs the server side over TCP: reading a hello with every length
// checked before more is read (steps 1 to 7, the routing preamble included),
// answering it, and refusing with a reset and nothing sent.
package xlgo

import (
	"errors"
	"io"
	"net"
	"time"
)

// ReadHello reads one hello from r for a server on port. On the client port a
// routing preamble naming this server's ck may come first; this server does not
// relay, so a preamble for another member is refused [other_member].
func (s *Server) ReadHello(r io.Reader, port Port) ([]byte, error) {
	hdr, err := readN(r, HeaderLen)
	if err != nil {
		return nil, err
	}
	if port == PortClient && hdr[0] == magic0 && hdr[1] == magic1 && hdr[3] == TypeRoute {
		if hdr, err = s.readAfterPreamble(r, hdr); err != nil {
			return nil, err
		}
	}
	h, err := s.checkHeader(port, hdr)
	if err != nil {
		return nil, err
	}
	rest, err := readN(r, h.total()-HeaderLen)
	if err != nil {
		return nil, err
	}
	return concat(hdr, rest), nil
}

// readAfterPreamble finishes the 12-byte preamble and reads the hello's header.
func (s *Server) readAfterPreamble(r io.Reader, first []byte) ([]byte, error) {
	if first[2] != 1 {
		return nil, refuse("unsupported_version", "routing preamble version %d", first[2])
	}
	more, err := readN(r, RouteLen-HeaderLen)
	if err != nil {
		return nil, err
	}
	if !s.ownHint(concat(first[4:], more)) {
		return nil, refuse("other_member", "preamble names another member's ck")
	}
	hdr, err := readN(r, HeaderLen)
	if err == nil && hdr[3] == TypeRoute {
		return nil, refuse("unexpected_type", "a second routing preamble")
	}
	return hdr, err
}

func readN(r io.Reader, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, refuse("io", "%v", err)
	}
	return b, nil
}

// Accept runs the server handshake on conn within timeout. A refused connection is
// reset (SO_LINGER 0), whatever the step, and nothing is sent.
func (s *Server) Accept(conn net.Conn, port Port, timeout time.Duration) (*Session, *Accepted, error) {
	conn.SetDeadline(time.Now().Add(timeout))
	a, err := s.handshake(conn, port)
	if err != nil {
		reset(conn)
		return nil, nil, err
	}
	conn.SetDeadline(time.Time{})
	sess, err := NewSession(conn, a.Keys.S2C, a.Keys.C2S)
	if err != nil {
		reset(conn)
		return nil, nil, err
	}
	sess.Version, sess.Keys, sess.Peer = a.Version, a.Keys, a.Peer
	return sess, a, nil
}

func (s *Server) handshake(conn net.Conn, port Port) (*Accepted, error) {
	hello, err := s.ReadHello(conn, port)
	if err != nil {
		return nil, err
	}
	sec, err := NewServerSecrets()
	if err != nil {
		return nil, err
	}
	a, err := s.ProcessHello(port, hello, time.Now().Unix(), sec)
	if err != nil {
		return nil, err
	}
	_, err = conn.Write(a.Reply)
	return a, err
}

// reset closes with a TCP RST, so that no refusal can be told from another.
func reset(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

// Serve accepts connections on ln for port and hands every session to handle.
// Refusals are passed to onRefuse (may be nil). It returns when ln is closed.
func (s *Server) Serve(ln net.Listener, port Port, handle func(*Session), onRefuse func(error)) error {
	for {
		conn, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		} else if err != nil {
			return err
		}
		go func() {
			sess, _, err := s.Accept(conn, port, 5*time.Second)
			if err != nil {
				if onRefuse != nil {
					onRefuse(err)
				}
				return
			}
			handle(sess)
		}()
	}
}

// Echo is a session handler that sends back what it receives, then closes.
func Echo(sess *Session) {
	defer sess.Close()
	if _, err := io.Copy(sess, sess); err != nil {
		return // truncated or forged: close without a close record (an error)
	}
	sess.CloseWrite()
	io.Copy(io.Discard, sess.Conn())
}
