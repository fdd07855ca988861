// This file is the record layer (section "Record layer"): one AES-256-GCM key and
// sequence counter per direction, the content type as the last plaintext byte,
// key updates, and the bounds a receiver checks before reading a body.
package xlgo

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// RecordError ends a session; Reason mirrors the reference's sessions_ended_total
// reasons (truncated, forged, bad_length, bad_content_type).
type RecordError struct {
	Reason string
	Detail string
}

func (e *RecordError) Error() string { return "record [" + e.Reason + "]: " + e.Detail }

// RecordCipher is one direction of a session: its current key and counter.
type RecordCipher struct {
	key       []byte
	aead      cipher.AEAD
	seq       uint64
	exhausted bool // the counter passed 2^64 - 1: no more records under this key
}

// NewRecordCipher starts a direction at seq 0 under key.
func NewRecordCipher(key []byte) (*RecordCipher, error) {
	rc := &RecordCipher{}
	return rc, rc.setKey(append([]byte(nil), key...))
}

func (rc *RecordCipher) setKey(key []byte) error {
	aead, err := newGCM(key)
	if err != nil {
		return err
	}
	rc.key, rc.aead, rc.seq, rc.exhausted = key, aead, 0, false
	return nil
}

// Seq is the number of records already sealed or opened under the current key.
func (rc *RecordCipher) Seq() uint64 { return rc.seq }

// Key is the current key of this direction.
func (rc *RecordCipher) Key() []byte { return rc.key }

// nonce is 00 00 00 00 | seq (u64): sequence numbers are never on the wire.
func (rc *RecordCipher) nonce() []byte {
	n := make([]byte, 12)
	binary.BigEndian.PutUint64(n[4:], rc.seq)
	return n
}

// Seal makes the record length | AES-256-GCM(key, nonce(seq), length, payload | type).
func (rc *RecordCipher) Seal(ctype byte, payload []byte) ([]byte, error) {
	if err := checkContent(ctype, len(payload)); err != nil {
		return nil, err
	}
	if rc.exhausted {
		return nil, errors.New("record counter exhausted: the session must end")
	}
	rec := binary.BigEndian.AppendUint16(nil, uint16(len(payload)+1+16))
	rec = rc.aead.Seal(rec, rc.nonce(), append(append([]byte(nil), payload...), ctype), rec[:2])
	return rec, rc.advance(ctype)
}

// CheckLength checks a record's two length bytes before its body is read.
func CheckLength(lenBytes []byte) (int, error) {
	n := int(binary.BigEndian.Uint16(lenBytes))
	if n < MinCiphertext || n > MaxCiphertext {
		return 0, &RecordError{"bad_length", fmt.Sprintf("record length %d", n)}
	}
	return n, nil
}

// Open opens one whole record (length bytes included) with the next expected seq.
func (rc *RecordCipher) Open(record []byte) (ctype byte, payload []byte, err error) {
	if len(record) < 2 {
		return 0, nil, &RecordError{"truncated", "no length"}
	}
	n, err := CheckLength(record[:2])
	if err != nil {
		return 0, nil, err
	}
	if len(record) != 2+n {
		return 0, nil, &RecordError{"truncated", "record shorter than its length"}
	}
	pt, err := rc.aead.Open(nil, rc.nonce(), record[2:], record[:2])
	if err != nil {
		return 0, nil, &RecordError{"forged", fmt.Sprintf("record %d does not open", rc.seq)}
	}
	ctype, payload = pt[len(pt)-1], pt[:len(pt)-1]
	if err := checkContent(ctype, len(payload)); err != nil {
		return 0, nil, err
	}
	return ctype, payload, rc.advance(ctype)
}

// checkContent: a known type, a bounded payload, and no payload on close or key update.
func checkContent(ctype byte, n int) error {
	switch {
	case ctype > ContentKeyUpdate:
		return &RecordError{"bad_content_type", fmt.Sprintf("content type %d", ctype)}
	case ctype != ContentData && n != 0:
		return &RecordError{"bad_content_type", fmt.Sprintf("content type %d with a %d-byte payload", ctype, n)}
	case n > MaxPayload:
		return &RecordError{"bad_length", fmt.Sprintf("payload of %d bytes", n)}
	}
	return nil
}

// advance counts the record; after a key update both sides switch this direction
// to HKDF-Expand(current key, "xlattice/1 key update", 32) and restart at seq 0.
func (rc *RecordCipher) advance(ctype byte) error {
	if ctype == ContentKeyUpdate {
		next, err := hkdf.Expand(sha256.New, rc.key, keyUpdateInfo, 32)
		if err != nil {
			return err
		}
		return rc.setKey(next)
	}
	if rc.seq == math.MaxUint64 {
		rc.exhausted = true
	} else {
		rc.seq++
	}
	return nil
}
