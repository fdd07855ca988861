// This file tests the record layer beyond the vectors: tampering, reordering,
// reflection, bounds, content types, and key updates (which no vector covers),
// checked against an independent HMAC computation of HKDF-Expand.
package xlgo

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"testing"
)

func recordReason(err error) string {
	var re *RecordError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ""
}

func pair(t *testing.T, key []byte) (*RecordCipher, *RecordCipher) {
	s, err := NewRecordCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	o, _ := NewRecordCipher(key)
	return s, o
}

func TestRecordForgeries(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	s, _ := pair(t, key)
	r0, _ := s.Seal(ContentData, []byte("first"))
	r1, _ := s.Seal(ContentData, []byte("second"))
	cases := map[string][][]byte{
		"reordered":   {r1},
		"replayed":    {r0, r0},
		"bit flipped": {flip(r0, 5)},
		"length flip": {flip(r0, 1)},
	}
	for name, recs := range cases {
		_, o := pair(t, key)
		var err error
		for _, r := range recs {
			if _, _, err = o.Open(r); err != nil {
				break
			}
		}
		if recordReason(err) == "" {
			t.Errorf("%s: accepted (%v)", name, err)
		}
	}
	other, _ := NewRecordCipher(bytes.Repeat([]byte{8}, 32)) // the other direction's key
	if _, _, err := other.Open(r0); recordReason(err) != "forged" {
		t.Errorf("reflected record: %v", err)
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 1
	return c
}

func TestRecordBoundsAndTypes(t *testing.T) {
	for _, n := range []uint16{0, 16, 16402, 0xffff} {
		if _, err := CheckLength([]byte{byte(n >> 8), byte(n)}); recordReason(err) != "bad_length" {
			t.Errorf("length %d accepted", n)
		}
	}
	for _, n := range []uint16{17, 16401} {
		if _, err := CheckLength([]byte{byte(n >> 8), byte(n)}); err != nil {
			t.Errorf("length %d refused", n)
		}
	}
	s, _ := pair(t, make([]byte, 32))
	if _, err := s.Seal(ContentData, make([]byte, MaxPayload+1)); err == nil {
		t.Error("payload above 16384 sealed")
	}
	if _, err := s.Seal(ContentClose, []byte{1}); err == nil {
		t.Error("close record with a payload sealed")
	}
	full, err := s.Seal(ContentData, make([]byte, MaxPayload))
	if err != nil || len(full) != 16403 {
		t.Fatalf("full record: %d bytes, %v", len(full), err)
	}
	// Seal raw plaintexts that Seal itself refuses, to check Open refuses them too.
	for name, pt := range map[string][]byte{"type 3": {3}, "close with payload": {9, ContentClose}, "key update with payload": {9, ContentKeyUpdate}} {
		rc, o := pair(t, make([]byte, 32))
		rec := []byte{0, byte(len(pt) + 16)}
		rec = rc.aead.Seal(rec, rc.nonce(), pt, rec[:2])
		if _, _, err := o.Open(rec); recordReason(err) != "bad_content_type" {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestKeyUpdate: the key after an update is HMAC-SHA256(key, "xlattice/1 key update" | 01)
// (HKDF-Expand with L = 32), seq restarts at 0, and only that direction changes.
func TestKeyUpdate(t *testing.T) {
	f := loadVectors(t, "v2.json")
	key := f.Handshakes[0].C2SKey
	s, o := pair(t, key)
	s.Seal(ContentData, []byte("a"))
	upd, err := s.Seal(ContentKeyUpdate, nil)
	if err != nil || len(upd) != 19 {
		t.Fatalf("key update record: %d bytes, %v", len(upd), err)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte("xlattice/1 key update\x01"))
	want := mac.Sum(nil)
	mustEqual(t, "updated key", s.Key(), want)
	if s.Seq() != 0 {
		t.Fatalf("seq %d after update", s.Seq())
	}
	next, _ := s.Seal(ContentData, []byte("b"))
	ref, _ := NewRecordCipher(want) // a fresh cipher under the new key at seq 0
	refRec, _ := ref.Seal(ContentData, []byte("b"))
	mustEqual(t, "first record after update", next, refRec)
	for i, r := range [][]byte{mustSealAt(t, key, 0, "a"), upd, next} {
		if _, _, err := o.Open(r); err != nil {
			t.Fatalf("receiver, record %d: %v", i, err)
		}
	}
	if !bytes.Equal(o.Key(), want) {
		t.Fatal("receiver did not update its key")
	}
}

func mustSealAt(t *testing.T, key []byte, _ int, payload string) []byte {
	rc, _ := NewRecordCipher(key)
	r, err := rc.Seal(ContentData, []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return r
}
