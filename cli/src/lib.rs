//! `kubectl xlattice`: the user's command line against a Kubernetes cluster. `check` asks
//! the installation whether it is healthy; `directory` and `connect` reach a cluster's
//! members with its directory read from the API server. Joins the operator's types (what
//! the API holds) to the protocol's client (sockets), as the sidecar joins them in a pod.

pub mod check;
