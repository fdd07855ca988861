// This file tests the member directory reader: the vectors' directory parses, and
// unknown fields, duplicates, bad NodeIDs and bad keys are refused as a whole.
package xlgo

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestDirectoryRefusals(t *testing.T) {
	f := loadVectors(t, "v1.json")
	var base DirectoryFile
	if err := json.Unmarshal(f.Directory, &base); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(d *DirectoryFile) string{
		"unknown field": func(d *DirectoryFile) string {
			b, _ := json.Marshal(d)
			return strings.Replace(string(b), `"name":"server"`, `"name":"server","port":7000`, 1)
		},
		"duplicate name":   func(d *DirectoryFile) string { d.Members[1].Name = "server"; return "" },
		"duplicate nodeId": func(d *DirectoryFile) string { d.Members[1].NodeID = d.Members[0].NodeID; return "" },
		"upper-case nodeId": func(d *DirectoryFile) string {
			d.Members[0].NodeID = strings.ToUpper(d.Members[0].NodeID)
			return ""
		},
		"private key as sk": func(d *DirectoryFile) string { d.Members[0].SK = f.Identities["server"].SKPrivPEM; return "" },
		"no cluster":        func(d *DirectoryFile) string { d.Cluster = ""; return "" },
	}
	for name, mutate := range cases {
		d := base
		d.Members = append([]MemberFile(nil), base.Members...)
		raw := mutate(&d)
		if raw == "" {
			b, _ := json.Marshal(d)
			raw = string(b)
		}
		if _, err := ParseDirectory([]byte(raw)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ParseDirectory(f.Directory); err != nil {
		t.Fatalf("the vectors' directory: %v", err)
	}
}
