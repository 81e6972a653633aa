//! Installing Palisade's CNI pieces on a node (the DaemonSet's init container) and removing
//! them again.
