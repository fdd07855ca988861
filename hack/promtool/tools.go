//go:build tools

// Package tools pins the commands hack/promtool.sh builds from this module.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
