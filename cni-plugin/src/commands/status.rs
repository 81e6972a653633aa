//! STATUS (CNI 1.1): can this plugin serve ADD right now? Code 50 ("the plugin is not
//! available, i.e. cannot service ADD requests") when it cannot. Code 51 ("existing
//! containers may have limited connectivity") is never returned: nothing here breaks pods
//! that are already running (the agent's last rules stay in force without it).

use super::warn;
use crate::agent::{self, Outcome};
use crate::config::{Env, NetConf};
use crate::error::{CniError, Result};
use crate::ipam;
use palisade_common::AgentRequest;

pub fn status(env: &Env, conf: &NetConf) -> Result<()> {
    if !conf.version.supports_gc_and_status() {
        return Err(CniError::IncompatibleVersion(format!(
            "STATUS is not supported by cniVersion {} (needs 1.1.0)",
            conf.version.as_str()
        )));
    }
    ipam::status(conf, env)?;
    let socket = conf.agent.socket.display();
    let problem = match agent::call(&conf.agent, &AgentRequest::Status, conf.agent.timeout) {
        Outcome::NoAgent => Some(format!("agent socket {socket} is absent or nobody listens")),
        Outcome::Answered(r) if r.ok && r.ready => None,
        Outcome::Answered(r) => Some(format!(
            "agent is not ready{}",
            r.error.map(|e| format!(": {e}")).unwrap_or_default()
        )),
        Outcome::Failed(m) => Some(m),
    };
    match problem {
        None => Ok(()),
        Some(m) if conf.agent.required => Err(CniError::NotAvailable(m)),
        Some(m) => {
            if conf.agent.socket.exists() {
                warn(format!("agent (not required): {m}"));
            }
            Ok(())
        }
    }
}
