// The pod sandbox's init process for the real node (scripts/cluster up --real-node): no registry is
// reachable to pull registry.k8s.io/pause, so scripts/msops/node.py packs this into an image.
module github.com/model-server-gitops/model-server-gitops/tools/cluster/pause

go 1.26.0
