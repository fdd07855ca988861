// Package xlgo is an independent implementation of the XLattice wire protocol,
// versions 1 and 2, written from docs/protocol.md and its test vectors alone.
//
// This file holds the protocol's constants (section "Constants" and the table of
// "Version 2") and the version-dependent domain-separation strings.
package xlgo

import "fmt"

// Version is the protocol version byte carried in headers and the hello plaintext.
type Version byte

const (
	V1 Version = 1
	V2 Version = 2
)

// Port says which of a member's two listeners a hello is meant for; the value is
// the byte inside the encrypted hello plaintext.
type Port byte

const (
	PortClient  Port = 1
	PortCluster Port = 2
)

func (p Port) String() string {
	switch p {
	case PortClient:
		return "client"
	case PortCluster:
		return "cluster"
	}
	return fmt.Sprintf("port(%d)", byte(p))
}

// Message types (header byte 3).
const (
	TypeHello byte = 1
	TypeReply byte = 2
	TypeRoute byte = 3
)

const (
	magic0 = 0x58 // 'X'
	magic1 = 0x4c // 'L'

	HeaderLen      = 8
	RouteLen       = 12
	HelloPlainLen  = 106
	ReplyHeaderLen = 6
	ReplyBodyLenV1 = 112  // 96 + 16
	ReplyBodyLenV2 = 1200 // 96 + 1088 + 16
	MinProofLen    = 295  // 1 + 20 + 2 + 256 + 16
	MaxProofLen    = 563  // 1 + 32 + 2 + 512 + 16
	KEMKeyLen      = 1184
	KEMCTLen       = 1088
	MaxClockSkew   = 30 // seconds

	MaxPayload    = 16384
	MinCiphertext = 17    // 1 content-type byte + 16 tag bytes
	MaxCiphertext = 16401 // MaxPayload + 1 + 16

	ContentData      byte = 0
	ContentClose     byte = 1
	ContentKeyUpdate byte = 2
)

// HybridSentinel is written by a version-2-capable server into the last 8 bytes of
// the server nonce of every version 1 reply, so that a dropped version 2 hello
// (a forced fallback) is detected by the client.
var HybridSentinel = []byte("XLHYBRID")

// keyUpdateInfo is the same in both versions: the spec says the record layer is
// shared and its keys already differ per version.
const keyUpdateInfo = "xlattice/1 key update"

var (
	proofNonce = []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}
	replyNonce = []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}
)

// label builds "xlattice/<v> <name>"; every string changes with the version so
// nothing of one version can be taken for the other.
func (v Version) label(name string) string {
	return fmt.Sprintf("xlattice/%d %s", byte(v), name)
}

func (v Version) helloLabel() []byte        { return []byte(v.label("hello")) }
func (v Version) proofContext() []byte      { return []byte(v.label("member-proof") + "\x00") }
func (v Version) transcriptContext() []byte { return []byte(v.label("transcript") + "\x00") }
func (v Version) c2sInfo() string           { return v.label("c2s") }
func (v Version) s2cInfo() string           { return v.label("s2c") }

// replyBodyLen is the fixed body length of this version's reply.
func (v Version) replyBodyLen() int {
	if v == V2 {
		return ReplyBodyLenV2
	}
	return ReplyBodyLenV1
}

// ReplyLen is the fixed total length of this version's reply.
func (v Version) ReplyLen() int { return ReplyHeaderLen + v.replyBodyLen() }

// kemLen is how many ML-KEM key bytes follow the RSA ciphertext in a hello.
func (v Version) kemLen() int {
	if v == V2 {
		return KEMKeyLen
	}
	return 0
}

// PQMode is the reference's postQuantum setting: which versions a party speaks.
type PQMode int

const (
	Preferred PQMode = iota // version 2 first, version 1 with peers that only speak it
	Required                // version 2 only
	Disabled                // version 1 only, no sentinel
)

// ParsePQMode reads the names the reference uses on its command line.
func ParsePQMode(s string) (PQMode, error) {
	switch s {
	case "Preferred", "preferred":
		return Preferred, nil
	case "Required", "required":
		return Required, nil
	case "Disabled", "disabled":
		return Disabled, nil
	}
	return 0, fmt.Errorf("unknown post-quantum mode %q (Preferred, Required, Disabled)", s)
}
