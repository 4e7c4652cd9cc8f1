//! Forwarded writes. Replicas that each append to the stream race for every sequence: under
//! writes spread over three, about half the appends lost a race (wasted round trips, commands
//! decided again). So the replica holding the write lease ([`super::lease`]) does the
//! appending: the others send their callers' commands to it, a group at a time, as a NATS
//! request on `<stream>.writes.<holder's writer id>`; it runs them through its own writer like
//! its callers' (one group, one append, fenced by the stream's compare-and-set as always) and
//! answers with each command's result and the revision it reached. The forwarding replica
//! replies to its callers once its tail applied that revision (read-your-writes holds).
//!
//! Forwarding only saves races; the compare-and-set is what keeps decisions right. So a
//! replica that finds no holder (none yet, or NATS says no one listens on its subject) appends
//! itself; one that sent a group and got no answer cannot know whether it ran and says so to
//! its callers (STORAGE_UNAVAILABLE: read before retrying), never runs it a second time. A
//! forwarded command is never forwarded again (two replicas that each believe the other holds
//! the lease would bounce it): a holder that lost the lease meanwhile appends it itself.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use prost::Message;
use tokio::sync::watch;
use tracing::warn;

use super::Replica;
use crate::domain::error::FieldViolation;
use crate::domain::{AccountId, Actor, BindingId, Command, Error, Outcome, PrefixId, Reason, Service, ServiceId};
use crate::log::codec::schema;
use crate::pb::forward as wire;
use crate::telemetry;

/// What became of a forwarded group.
pub enum Forwarded {
    /// The holder ran every command: their results, in order, and the revision to wait for.
    Answered {
        results: Vec<Result<Outcome, Error>>,
        revision: u64,
    },
    /// Nothing reached a holder: append the group directly.
    NoHolder,
    /// Sent, but no answer: the commands may or may not have run.
    Unknown(String),
}

impl Replica {
    /// The subject a replica takes forwarded groups on.
    fn writes_subject(&self, writer_id: &str) -> String {
        format!("{}.writes.{writer_id}", self.name)
    }

    /// The replica to forward writes to: the lease holder, unless it is this one or unknown.
    pub fn forward_target(&self) -> Option<String> {
        let holder = self.lease_holder.borrow();
        holder.as_ref().filter(|holder| **holder != self.writer_id).cloned()
    }

    /// Sends `commands` (each with the `traceparent` of the call that asked, or "") to
    /// `holder` and waits for its answer; the holder decides them once it applied the stream
    /// up to `after_sequence` (what this replica holds).
    pub async fn forward(
        &self,
        holder: &str,
        commands: &[(&Command, &Actor)],
        traceparents: Vec<String>,
        after_sequence: u64,
    ) -> Forwarded {
        use async_nats::RequestErrorKind as Kind;
        let group = wire::ForwardedGroup {
            commands: commands
                .iter()
                .map(|(command, actor)| command_record(command, actor))
                .collect(),
            traceparents,
            after_sequence,
        };
        let request = async_nats::Request::new()
            .payload(Bytes::from(group.encode_to_vec()))
            // The holder's append may take a resend after a timeout.
            .timeout(Some(2 * self.timeout));
        match self.client.send_request(self.writes_subject(holder), request).await {
            Ok(message) => match decode_answer(&message.payload, commands.len()) {
                Ok((results, revision)) => {
                    self.metrics.forwarded_commands.inc_by(commands.len() as u64);
                    self.metrics.forwards.inc();
                    Forwarded::Answered { results, revision }
                }
                Err(why) => Forwarded::Unknown(format!("the writing replica's answer is unreadable: {why}")),
            },
            Err(error) => match error.kind() {
                Kind::NoResponders | Kind::InvalidSubject | Kind::MaxPayloadExceeded => Forwarded::NoHolder,
                Kind::TimedOut => Forwarded::Unknown("the writing replica did not answer in time".into()),
                Kind::Other => Forwarded::Unknown(format!("forwarding to the writing replica failed: {error}")),
            },
        }
    }
}

/// Takes the groups other replicas forward to this one until `shutdown`: once `reached(S)`
/// (this replica applied the stream up to S, the sender's sequence when it sent the group;
/// given up after the replica's timeout, the commands then refused unrun), each command runs
/// through `execute` (this replica's writer, never forwarding again; with the trace of the
/// call that asked, if it is traced), and the answer carries `revision()` read once all have
/// run.
pub async fn serve<Execute, Run, Reach, Reached>(
    replica: Arc<Replica>,
    execute: Execute,
    revision: impl Fn() -> u64 + Send + Sync + 'static,
    reached: Reach,
    mut shutdown: watch::Receiver<bool>,
) where
    Execute: Fn(Command, Actor, Option<opentelemetry::Context>) -> Run + Send + Sync + 'static,
    Run: Future<Output = Result<Outcome, Error>> + Send + 'static,
    Reach: Fn(u64) -> Reached + Send + Sync + 'static,
    Reached: Future<Output = ()> + Send + 'static,
{
    let subject = replica.writes_subject(&replica.writer_id);
    let mut requests = loop {
        match replica.client.subscribe(subject.clone()).await {
            Ok(subscriber) => break subscriber,
            Err(error) => {
                warn!(%error, subject, "cannot take forwarded writes; retrying");
                tokio::select! {
                    _ = shutdown.wait_for(|stopping| *stopping) => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let execute = Arc::new(execute);
    let revision = Arc::new(revision);
    let reached = Arc::new(reached);
    loop {
        let request = tokio::select! {
            _ = shutdown.wait_for(|stopping| *stopping) => break,
            request = requests.next() => match request {
                Some(request) => request,
                None => break,
            },
        };
        let Some(reply_to) = request.reply.clone() else {
            continue;
        };
        let (replica, execute, revision) = (Arc::clone(&replica), Arc::clone(&execute), Arc::clone(&revision));
        let reached = Arc::clone(&reached);
        tokio::spawn(async move {
            let (commands, traceparents, after_sequence) = match decode_group(&request.payload) {
                Ok(decoded) => decoded,
                Err(why) => {
                    // Not answered: the sender learns nothing ran only by reading.
                    warn!(why, "an unreadable forwarded group; dropped");
                    return;
                }
            };
            // Usually at once (no timer then): the tail brings each message as soon as the
            // stream took it.
            let wait = reached(after_sequence);
            tokio::pin!(wait);
            let reached_in_time =
                wait.as_mut().now_or_never().is_some() || tokio::time::timeout(replica.timeout, wait).await.is_ok();
            let results: Vec<Result<Outcome, Error>> = if reached_in_time {
                // All queued before any is awaited, so that the writer decides them as one group.
                let mut traceparents = traceparents.into_iter();
                let runs: Vec<_> = (commands.into_iter())
                    .map(|(command, actor)| {
                        let trace = telemetry::context_of_traceparent(&traceparents.next().unwrap_or_default());
                        tokio::spawn(execute(command, actor, trace))
                    })
                    .collect();
                let mut results = Vec::with_capacity(runs.len());
                for run in runs {
                    results
                        .push(run.await.unwrap_or_else(|_| {
                            Err(Error::new(Reason::Internal, "a forwarded command's task failed"))
                        }));
                }
                results
            } else {
                let behind = Error::new(
                    Reason::NotReady,
                    format!(
                        "the writing replica has not applied the replicated log up to message {after_sequence} (where the call was received) within {:?}; nothing was changed, retry",
                        replica.timeout
                    ),
                );
                commands.iter().map(|_| Err(behind.clone())).collect()
            };
            let answer = wire::ForwardedAnswer {
                results: results.iter().map(result_record).collect(),
                revision: revision(),
            };
            if let Err(error) = replica.client.publish(reply_to, answer.encode_to_vec().into()).await {
                warn!(%error, "cannot answer a forwarded group");
            }
        });
    }
    let _ = requests.unsubscribe().await;
}

fn command_record(command: &Command, actor: &Actor) -> wire::ForwardedCommand {
    use wire::forwarded_command::Command as Wire;
    let id = |bytes: &[u8; 16]| bytes.to_vec();
    let command = match command {
        Command::CreatePrefix {
            id: prefix_id,
            account_id,
            cidr,
            asn,
            description,
        } => Wire::CreatePrefix(wire::CreatePrefix {
            id: id(prefix_id.as_bytes()),
            account_id: id(account_id.as_bytes()),
            cidr: cidr.to_string(),
            asn: *asn,
            description: description.clone(),
        }),
        Command::UpdatePrefix {
            account_id,
            prefix_id,
            description,
        } => Wire::UpdatePrefix(wire::UpdatePrefix {
            account_id: id(account_id.as_bytes()),
            prefix_id: id(prefix_id.as_bytes()),
            description: description.clone(),
        }),
        Command::DeletePrefix { account_id, prefix_id } => Wire::DeletePrefix(wire::DeletePrefix {
            account_id: id(account_id.as_bytes()),
            prefix_id: id(prefix_id.as_bytes()),
        }),
        Command::CreateBinding {
            id: binding_id,
            account_id,
            prefix_id,
            cidr,
            service,
            request_id,
        } => Wire::CreateBinding(wire::CreateBinding {
            id: id(binding_id.as_bytes()),
            account_id: id(account_id.as_bytes()),
            prefix_id: id(prefix_id.as_bytes()),
            cidr: cidr.to_string(),
            service_id: id(service.id().as_bytes()),
            request_id: request_id.clone(),
        }),
        Command::DeleteBinding {
            account_id,
            prefix_id,
            binding_id,
        } => Wire::DeleteBinding(wire::DeleteBinding {
            account_id: id(account_id.as_bytes()),
            prefix_id: id(prefix_id.as_bytes()),
            binding_id: id(binding_id.as_bytes()),
        }),
        Command::CompleteProvisioning {
            account_id,
            prefix_id,
            binding_id,
        } => Wire::CompleteProvisioning(wire::CompleteProvisioning {
            account_id: id(account_id.as_bytes()),
            prefix_id: id(prefix_id.as_bytes()),
            binding_id: id(binding_id.as_bytes()),
        }),
        Command::ActivateBinding { binding_id } => Wire::ActivateBinding(wire::ActivateBinding {
            binding_id: id(binding_id.as_bytes()),
        }),
    };
    wire::ForwardedCommand {
        actor: Some(schema::actor_record(actor)),
        command: Some(command),
    }
}

/// A forwarded group's commands with who asked, and the callers' `traceparent`s (fewer when
/// a sender sent none).
type DecodedGroup = (Vec<(Command, Actor)>, Vec<String>, u64);

fn decode_group(bytes: &[u8]) -> Result<DecodedGroup, String> {
    let group = wire::ForwardedGroup::decode(bytes).map_err(|error| error.to_string())?;
    let commands = group.commands.into_iter().map(command).collect::<Result<_, _>>()?;
    Ok((commands, group.traceparents, group.after_sequence))
}

fn command(record: wire::ForwardedCommand) -> Result<(Command, Actor), String> {
    use wire::forwarded_command::Command as Wire;
    let account = |bytes: &[u8]| AccountId::from_bytes(bytes).ok_or("bad account id");
    let prefix = |bytes: &[u8]| PrefixId::from_bytes(bytes).ok_or("bad prefix id");
    let binding = |bytes: &[u8]| BindingId::from_bytes(bytes).ok_or("bad binding id");
    let command = match record.command.ok_or("no command")? {
        Wire::CreatePrefix(create) => Command::CreatePrefix {
            id: prefix(&create.id)?,
            account_id: account(&create.account_id)?,
            cidr: schema::cidr(&create.cidr)?,
            asn: create.asn,
            description: create.description,
        },
        Wire::UpdatePrefix(update) => Command::UpdatePrefix {
            account_id: account(&update.account_id)?,
            prefix_id: prefix(&update.prefix_id)?,
            description: update.description,
        },
        Wire::DeletePrefix(delete) => Command::DeletePrefix {
            account_id: account(&delete.account_id)?,
            prefix_id: prefix(&delete.prefix_id)?,
        },
        Wire::CreateBinding(create) => {
            let service_id = ServiceId::from_bytes(&create.service_id).ok_or("bad service id")?;
            Command::CreateBinding {
                id: binding(&create.id)?,
                account_id: account(&create.account_id)?,
                prefix_id: prefix(&create.prefix_id)?,
                cidr: schema::cidr(&create.cidr)?,
                service: Service::from_id(service_id).ok_or_else(|| format!("unknown service {service_id}"))?,
                request_id: create.request_id,
            }
        }
        Wire::DeleteBinding(delete) => Command::DeleteBinding {
            account_id: account(&delete.account_id)?,
            prefix_id: prefix(&delete.prefix_id)?,
            binding_id: binding(&delete.binding_id)?,
        },
        Wire::CompleteProvisioning(complete) => Command::CompleteProvisioning {
            account_id: account(&complete.account_id)?,
            prefix_id: prefix(&complete.prefix_id)?,
            binding_id: binding(&complete.binding_id)?,
        },
        Wire::ActivateBinding(activate) => Command::ActivateBinding {
            binding_id: binding(&activate.binding_id)?,
        },
    };
    Ok((command, schema::actor(record.actor.ok_or("no actor")?)))
}

fn result_record(result: &Result<Outcome, Error>) -> wire::ForwardedResult {
    use wire::forwarded_result::Result as Wire;
    let result = match result {
        Ok(Outcome::Prefix(prefix)) => Wire::Prefix(schema::prefix_record(prefix)),
        Ok(Outcome::Binding(binding)) => Wire::Binding(schema::binding_record(binding)),
        Ok(Outcome::PrefixDeleted(id)) => Wire::PrefixDeleted(id.as_bytes().to_vec()),
        Ok(Outcome::BindingDeleted(id)) => Wire::BindingDeleted(id.as_bytes().to_vec()),
        Ok(Outcome::Nothing) => Wire::Nothing(true),
        Err(error) => Wire::Refusal(wire::Refusal {
            code: error.reason.code(),
            message: error.message.clone(),
            violations: (error.violations.iter())
                .map(|violation| wire::Violation {
                    field: violation.field.clone(),
                    description: violation.description.clone(),
                })
                .collect(),
            retry_after_millis: error.retry_after.map(|delay| delay.as_millis() as u64),
        }),
    };
    wire::ForwardedResult { result: Some(result) }
}

fn decode_answer(bytes: &[u8], commands: usize) -> Result<(Vec<Result<Outcome, Error>>, u64), String> {
    let answer = wire::ForwardedAnswer::decode(bytes).map_err(|error| error.to_string())?;
    if answer.results.len() != commands {
        return Err(format!("{} results for {commands} commands", answer.results.len()));
    }
    let results = answer.results.into_iter().map(result).collect::<Result<_, _>>()?;
    Ok((results, answer.revision))
}

fn result(record: wire::ForwardedResult) -> Result<Result<Outcome, Error>, String> {
    use wire::forwarded_result::Result as Wire;
    Ok(match record.result.ok_or("no result")? {
        Wire::Prefix(prefix) => Ok(Outcome::Prefix(schema::prefix(Some(prefix))?)),
        Wire::Binding(binding) => Ok(Outcome::Binding(schema::binding(Some(binding))?)),
        Wire::PrefixDeleted(id) => Ok(Outcome::PrefixDeleted(
            PrefixId::from_bytes(&id).ok_or("bad prefix id")?,
        )),
        Wire::BindingDeleted(id) => Ok(Outcome::BindingDeleted(
            BindingId::from_bytes(&id).ok_or("bad binding id")?,
        )),
        Wire::Nothing(_) => Ok(Outcome::Nothing),
        Wire::Refusal(refusal) => {
            let reason = (Reason::ALL.iter())
                .find(|reason| reason.code() == refusal.code)
                .ok_or_else(|| format!("unknown reason code {}", refusal.code))?;
            Err(Error {
                reason: *reason,
                message: refusal.message,
                violations: (refusal.violations.into_iter())
                    .map(|violation| FieldViolation {
                        field: violation.field,
                        description: violation.description,
                    })
                    .collect(),
                retry_after: refusal.retry_after_millis.map(std::time::Duration::from_millis),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ProvisioningState, fixtures};

    #[test]
    fn commands_and_results_cross_unchanged() {
        let actor = Actor {
            principal: "svc".into(),
            credential: "token:t1".into(),
            via: "spiffe://x".into(),
            call_id: "c".into(),
            request_id: "r".into(),
            peer: "127.0.0.1:1".into(),
        };
        let prefix = fixtures::prefix("192.0.2.0/24");
        let binding = fixtures::binding(&prefix, "192.0.2.0/25", Service::Cdn, ProvisioningState::Active);
        let (account_id, prefix_id, binding_id) = (prefix.account_id, prefix.id, binding.id);
        let commands = [
            Command::CreatePrefix {
                id: prefix_id,
                account_id,
                cidr: prefix.cidr,
                asn: Some(64_496),
                description: "d".into(),
            },
            Command::CreatePrefix {
                id: prefix_id,
                account_id,
                cidr: "2001:db8::/48".parse().unwrap(),
                asn: None,
                description: String::new(),
            },
            Command::UpdatePrefix {
                account_id,
                prefix_id,
                description: "e".into(),
            },
            Command::DeletePrefix { account_id, prefix_id },
            Command::CreateBinding {
                id: binding_id,
                account_id,
                prefix_id,
                cidr: binding.cidr,
                service: Service::MagicTransit,
                request_id: Some("idem".into()),
            },
            Command::CreateBinding {
                id: binding_id,
                account_id,
                prefix_id,
                cidr: binding.cidr,
                service: Service::Spectrum,
                request_id: None,
            },
            Command::DeleteBinding {
                account_id,
                prefix_id,
                binding_id,
            },
            Command::CompleteProvisioning {
                account_id,
                prefix_id,
                binding_id,
            },
            Command::ActivateBinding { binding_id },
        ];
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string();
        for command in commands {
            let bytes = wire::ForwardedGroup {
                commands: vec![command_record(&command, &actor)],
                traceparents: vec![traceparent.clone()],
                after_sequence: 41,
            }
            .encode_to_vec();
            let decoded = (vec![(command, actor.clone())], vec![traceparent.clone()], 41);
            assert_eq!(decode_group(&bytes).unwrap(), decoded);
        }
        let mut refusal = Error::field(Reason::InvalidCidr, "cidr", "bad");
        refusal.retry_after = Some(std::time::Duration::from_millis(1500));
        let results: Vec<Result<Outcome, Error>> = vec![
            Ok(Outcome::Prefix(prefix)),
            Ok(Outcome::Binding(binding)),
            Ok(Outcome::PrefixDeleted(prefix_id)),
            Ok(Outcome::BindingDeleted(binding_id)),
            Ok(Outcome::Nothing),
            Err(refusal),
            Err(Error::new(Reason::WriteConflict, "lost")),
        ];
        let bytes = wire::ForwardedAnswer {
            results: results.iter().map(result_record).collect(),
            revision: 42,
        }
        .encode_to_vec();
        assert_eq!(decode_answer(&bytes, results.len()).unwrap(), (results.clone(), 42));
        assert!(decode_answer(&bytes, results.len() + 1).is_err());
    }
}
