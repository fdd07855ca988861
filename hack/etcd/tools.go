//go:build tools

// Package tools pins the commands hack/control-plane.sh builds from this module.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "go.etcd.io/etcd/etcdctl/v3"
)
