// This file is a session: the record layer over a TCP connection, as an io.Reader
// and io.Writer with half-close (a close record, then shutting the sending half)
// and truncation detection (TCP EOF without a close record is an error).
package xlgo

import (
	"errors"
	"io"
	"net"
	"sync"
)

// autoKeyUpdateAt is when a sender updates its key: before the 2^24-th record.
const autoKeyUpdateAt = 1<<24 - 1

// Session is an established session on one connection.
type Session struct {
	conn    net.Conn
	Version Version
	Keys    *SessionKeys
	Peer    []byte // the proven NodeID (server side, cluster port)

	wmu         sync.Mutex
	send        *RecordCipher
	writeClosed bool

	rmu        sync.Mutex
	recv       *RecordCipher
	pending    []byte
	readClosed bool
	readErr    error
}

// NewSession starts the record layer with the given send and receive keys.
func NewSession(conn net.Conn, sendKey, recvKey []byte) (*Session, error) {
	send, err := NewRecordCipher(sendKey)
	if err != nil {
		return nil, err
	}
	recv, err := NewRecordCipher(recvKey)
	if err != nil {
		return nil, err
	}
	return &Session{conn: conn, send: send, recv: recv}, nil
}

// Conn is the underlying connection.
func (s *Session) Conn() net.Conn { return s.conn }

// Write sends p as data records of at most MAX_PAYLOAD bytes each.
func (s *Session) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.writeClosed {
		return 0, errors.New("session: write after close")
	}
	written := 0
	for len(p) > 0 {
		n := min(len(p), MaxPayload)
		if err := s.writeRecord(ContentData, p[:n]); err != nil {
			return written, err
		}
		written, p = written+n, p[n:]
	}
	return written, nil
}

// writeRecord seals and sends one record, updating the key first when due.
func (s *Session) writeRecord(ctype byte, payload []byte) error {
	if ctype == ContentData && s.send.Seq() >= autoKeyUpdateAt {
		if err := s.writeRecord(ContentKeyUpdate, nil); err != nil {
			return err
		}
	}
	rec, err := s.send.Seal(ctype, payload)
	if err != nil {
		return err
	}
	_, err = s.conn.Write(rec)
	return err
}

// KeyUpdate sends a key update record: the last one under the current send key.
func (s *Session) KeyUpdate() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.writeRecord(ContentKeyUpdate, nil)
}

// CloseWrite sends a close record and shuts down the sending half of TCP.
func (s *Session) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.writeClosed {
		return nil
	}
	s.writeClosed = true
	if err := s.writeRecord(ContentClose, nil); err != nil {
		return err
	}
	if cw, ok := s.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Close closes the connection (without a close record if none was sent).
func (s *Session) Close() error { return s.conn.Close() }

// Read returns decrypted data; io.EOF only after the peer's close record.
func (s *Session) Read(p []byte) (int, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	for len(s.pending) == 0 {
		if s.readClosed {
			return 0, io.EOF
		}
		if s.readErr != nil {
			return 0, s.readErr
		}
		s.readErr = s.readRecord()
	}
	n := copy(p, s.pending)
	s.pending = s.pending[n:]
	return n, nil
}

// readRecord reads and opens one record; the length is checked before the body is read.
func (s *Session) readRecord() error {
	var lenBytes [2]byte
	if _, err := io.ReadFull(s.conn, lenBytes[:]); err != nil {
		return truncated(err)
	}
	n, err := CheckLength(lenBytes[:])
	if err != nil {
		return err
	}
	rec := make([]byte, 2+n)
	copy(rec, lenBytes[:])
	if _, err := io.ReadFull(s.conn, rec[2:]); err != nil {
		return truncated(err)
	}
	ctype, payload, err := s.recv.Open(rec)
	if err != nil {
		return err
	}
	switch ctype {
	case ContentData:
		s.pending = payload // an empty data record is skipped by the loop in Read
	case ContentClose:
		s.readClosed = true
	}
	return nil
}

// truncated maps a TCP end of stream without a close record to an error.
func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &RecordError{"truncated", "end of stream without a close record"}
	}
	return err
}
