// This file opens client sessions over TCP: routing preamble, hello, reading the
// fixed-length reply, and the version choice of section "Choosing a version"
// (version 2 first; a fallback to version 1 that refuses the sentinel).
package xlgo

import (
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// DialConfig says whom to connect to and how.
type DialConfig struct {
	Address  string
	CK       *rsa.PublicKey // the member's ck, from the directory
	Port     Port
	Member   *Identity // own identity, for the cluster port's member proof
	Mode     PQMode
	Preamble bool // send the routing preamble (client port only)
	Timeout  time.Duration
}

// ErrNoReply means the server closed before a whole reply arrived: it refused the
// hello (it never says why), or does not hold the ck.
var ErrNoReply = errors.New("connection closed before a reply arrived")

// Dial opens a session according to cfg.Mode.
func Dial(cfg DialConfig) (*Session, error) {
	switch cfg.Mode {
	case Disabled:
		return DialVersion(cfg, V1, false)
	case Required:
		return DialVersion(cfg, V2, false)
	}
	s, err := DialVersion(cfg, V2, false)
	if err == nil || !errors.Is(err, ErrNoReply) {
		return s, err
	}
	s, err = DialVersion(cfg, V1, true)
	if errors.Is(err, ErrDowngrade) {
		// A server short of capacity also closes silently: try version 2 once more
		// before reporting the downgrade, as the reference does.
		if s2, err2 := DialVersion(cfg, V2, false); err2 == nil {
			return s2, nil
		}
	}
	return s, err
}

// DialVersion opens one connection and runs one handshake of version v.
func DialVersion(cfg DialConfig, v Version, refuseSentinel bool) (*Session, error) {
	d := net.Dialer{Timeout: cfg.Timeout}
	conn, err := d.Dial("tcp", cfg.Address)
	if err != nil {
		return nil, err
	}
	secrets, err := NewClientSecrets(v, time.Now())
	if err != nil {
		conn.Close()
		return nil, err
	}
	p := HelloParams{Version: v, Port: cfg.Port, CK: cfg.CK, Member: cfg.Member, RefuseSentinel: refuseSentinel}
	s, err := ClientHandshakeConn(conn, p, secrets, cfg.Preamble && cfg.Port == PortClient, cfg.Timeout)
	if err != nil {
		conn.Close()
	}
	return s, err
}

// ClientHandshakeConn runs the client handshake on an open connection.
func ClientHandshakeConn(conn net.Conn, p HelloParams, secrets *ClientSecrets, preamble bool, timeout time.Duration) (*Session, error) {
	if timeout > 0 {
		conn.SetDeadline(time.Now().Add(timeout))
		defer conn.SetDeadline(time.Time{})
	}
	hs, err := NewClientHandshake(p, secrets)
	if err != nil {
		return nil, err
	}
	out := hs.Hello
	if preamble {
		pre, err := RoutePreamble(p.CK)
		if err != nil {
			return nil, err
		}
		out = concat(pre, hs.Hello)
	}
	if _, err := conn.Write(out); err != nil {
		return nil, err
	}
	return finishClient(conn, hs)
}

// finishClient reads exactly the reply's length, checks it and starts the session.
func finishClient(conn net.Conn, hs *ClientHandshake) (*Session, error) {
	reply := make([]byte, hs.ReplyLen())
	if _, err := io.ReadFull(conn, reply); err != nil {
		return nil, fmt.Errorf("%w (version %d hello): %v", ErrNoReply, hs.Params.Version, err)
	}
	keys, err := hs.FinishReply(reply)
	if err != nil {
		return nil, err
	}
	s, err := NewSession(conn, keys.C2S, keys.S2C)
	if err != nil {
		return nil, err
	}
	s.Version, s.Keys = hs.Params.Version, keys
	return s, nil
}
