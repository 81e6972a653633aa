//! Real runtimes as clients of the palisade CNI plugin.
