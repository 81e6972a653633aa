pub mod apiserver;
pub mod cluster;
pub mod demo;
pub mod kube;
pub mod matrix;
pub mod runner;
pub mod scenario;
pub mod testpod;
