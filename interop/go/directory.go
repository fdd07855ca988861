// This file reads the member directory (section "Member directory") in its JSON
// form. JSON is what the vectors carry and what the reference reads with its YAML
// parser; YAML proper is not supported here (no YAML parser in the standard library).
package xlgo

import (
	"bytes"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
)

// DirectoryFile is the on-disk form; field names are the spec's camelCase ones.
type DirectoryFile struct {
	Cluster string       `json:"cluster"`
	Members []MemberFile `json:"members"`
}

// MemberFile is one record of the directory as written.
type MemberFile struct {
	Name            string   `json:"name"`
	NodeID          string   `json:"nodeId"`
	SK              string   `json:"sk"`
	CK              string   `json:"ck"`
	ClusterEndpoint string   `json:"clusterEndpoint,omitempty"`
	ClientEndpoint  string   `json:"clientEndpoint,omitempty"`
	Attributes      []string `json:"attributes,omitempty"`
}

// Member is a parsed directory record.
type Member struct {
	MemberFile
	ID    []byte
	SKPub *rsa.PublicKey
	CKPub *rsa.PublicKey
}

// Directory is a parsed, validated member directory.
type Directory struct {
	Cluster string
	Members []*Member
}

// ParseDirectory parses and validates a JSON directory. Unknown fields are refused,
// and so is the whole directory if any key does not parse or a name/NodeID repeats.
func ParseDirectory(data []byte) (*Directory, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f DirectoryFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	if f.Cluster == "" || f.Members == nil {
		return nil, fmt.Errorf("directory: cluster and members are required")
	}
	d := &Directory{Cluster: f.Cluster}
	for _, mf := range f.Members {
		m, err := parseMember(mf)
		if err != nil {
			return nil, err
		}
		if d.Lookup(m.Name) != nil || d.Lookup(m.NodeID) != nil {
			return nil, fmt.Errorf("directory: member %q: duplicate name or nodeId", m.Name)
		}
		d.Members = append(d.Members, m)
	}
	return d, nil
}

func parseMember(mf MemberFile) (*Member, error) {
	m := &Member{MemberFile: mf}
	var err error
	if mf.Name == "" {
		return nil, fmt.Errorf("directory: a member has no name")
	}
	if m.ID, err = ParseNodeID(mf.NodeID); err != nil {
		return nil, fmt.Errorf("directory: member %q: nodeId: %w", mf.Name, err)
	}
	if m.SKPub, err = ParsePublicKeyPEM([]byte(mf.SK)); err != nil {
		return nil, fmt.Errorf("directory: member %q: sk: %w", mf.Name, err)
	}
	if m.CKPub, err = ParsePublicKeyPEM([]byte(mf.CK)); err != nil {
		return nil, fmt.Errorf("directory: member %q: ck: %w", mf.Name, err)
	}
	return m, nil
}

// LoadDirectory reads a JSON directory file.
func LoadDirectory(path string) (*Directory, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseDirectory(data)
}

// Lookup finds a member by name or by NodeID (hex), as a client may.
func (d *Directory) Lookup(nameOrID string) *Member {
	for _, m := range d.Members {
		if m.Name == nameOrID || m.NodeID == nameOrID {
			return m
		}
	}
	return nil
}

// ByNodeID finds the member whose NodeID is id (raw bytes, from a member proof).
func (d *Directory) ByNodeID(id []byte) *Member {
	if d == nil {
		return nil
	}
	return d.Lookup(hex.EncodeToString(id))
}
