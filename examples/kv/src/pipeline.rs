//! Pipelining: the writes a client sent together are replicated together.
//!
//! A connection parses every complete command already in its read buffer. A run of consecutive
//! writes is gathered into a [`Batch`]; the batch is proposed once, as one log entry (a
//! [`WriteOp::Exec`] without watched keys), and its replies go out in order, each command with
//! its own reply. So a pipeline of 16 writes costs one round of consensus and one fsync instead
//! of 16.
//!
//! What a client sees is what Redis gives a pipeline:
//! - replies come in the order the commands were sent, and a read sees every write sent before
//!   it on the same connection (a command that does not join the batch runs only after the
//!   batch before it has been applied);
//! - a command that fails (a wrong type, a value that is not an integer) answers only its own
//!   error, the others apply;
//! - if the batch as a whole could not be replicated, every command in it gets the same answer
//!   (for instance `-TRYAGAIN the outcome is unknown …`), so no client is told a write was
//!   refused when it may have been applied.
//!
//! Only writes whose reply is small join a batch, so replies held for a batch stay small (a
//! connection still sends its replies once 1 MiB of them wait). Everything else ends the batch
//! and runs alone, in its place: reads (each answered as without pipelining), writes that
//! answer with stored values (`GETSET`, `SET … GET`, `GETDEL`, `GETEX`, `LPOP`/`RPOP`/`SPOP`),
//! `MULTI`/`EXEC`/`WATCH`, `AUTH`, `HELLO`, `CONFIG`, `INFO`, and commands that are refused
//! before they reach the store. A batch holds at most [`ConnLimits::max_batch`] commands and at
//! most `client-query-buffer-limit` bytes of arguments, so it is never larger than one command
//! may be. A batch of a single write is proposed as that write alone (what a client that does
//! not pipeline always gets).

use bytes::Bytes;

use crate::commands::Action;
use crate::commands::Post;
use crate::limits::ConnLimits;
use crate::resp;
use crate::store::Queued;
use crate::store::Reply;
use crate::store::WriteOp;

/// The commands of one connection waiting to be replicated together.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<Queued>,
    posts: Vec<Post>,
    bytes: usize,
    /// The clock reading of the first command: the batch's stamp.
    now: u64,
}

/// How a batch is run.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// A single write: proposed on its own.
    Write { op: WriteOp, post: Post, now: u64 },
    /// Several writes: one log entry; `posts` reshape each reply.
    Together {
        op: WriteOp,
        posts: Vec<Post>,
        now: u64,
    },
}

/// What a command costs against the batch's byte limit (as `MULTI` counts it).
pub fn cost(args: &[Bytes]) -> usize {
    args.iter().map(|a| a.len() + resp::ARG_OVERHEAD).sum()
}

impl Batch {
    /// Whether no command is waiting.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Whether `action` may join a batch: a write whose reply is small (not a stored value).
    pub fn joins(action: &Action) -> bool {
        match action {
            Action::Write { op, .. } => !matches!(
                op,
                WriteOp::Set { get: true, .. }
                    | WriteOp::GetEx { .. }
                    | WriteOp::GetDel(_)
                    | WriteOp::Pop { .. }
                    | WriteOp::SPop { .. }
                    | WriteOp::Exec { .. }
                    | WriteOp::ExecBounded { .. }
                    | WriteOp::ExecStrict { .. }
            ),
            _ => false,
        }
    }

    /// Whether a command costing `cost` bytes still fits under `limits`.
    pub fn fits(&self, cost: usize, limits: &ConnLimits) -> bool {
        self.ops.len() < limits.max_batch && self.bytes + cost <= limits.resp.max_frame
    }

    /// Adds the write of a command that [`Batch::joins`] allowed. `now` is its clock reading.
    pub fn push(&mut self, op: WriteOp, post: Post, cost: usize, now: u64) {
        if self.ops.is_empty() {
            self.now = now;
        }
        self.ops.push(Queued::Write(op));
        self.posts.push(post);
        self.bytes += cost;
    }

    /// Empties the batch into what to run; `None` if it was empty.
    pub fn take(&mut self) -> Option<Plan> {
        if self.ops.len() <= 1 {
            // A single write (what a client that does not pipeline always sends): taken out in
            // place, so the batch keeps its buffers for the next command.
            let (Some(Queued::Write(op)), Some(post)) = (self.ops.pop(), self.posts.pop()) else {
                return None;
            };
            self.bytes = 0;
            return Some(Plan::Write {
                op,
                post,
                now: self.now,
            });
        }
        let batch = std::mem::take(self);
        let ops = batch.ops;
        Some(Plan::Together {
            op: WriteOp::Exec {
                watched: Vec::new(),
                ops,
            },
            posts: batch.posts,
            now: batch.now,
        })
    }
}

/// Each command's reply from the reply to a batch proposed together: the store's array of
/// replies, reshaped; or, if the batch as a whole failed, that failure for every command.
pub fn split(reply: Reply, posts: Vec<Post>) -> Vec<Reply> {
    match reply {
        Reply::Array(replies) if replies.len() == posts.len() => replies
            .into_iter()
            .zip(posts)
            .map(|(r, post)| post.apply(r))
            .collect(),
        Reply::Array(_) => {
            vec![Reply::error("ERR internal error: malformed batch reply"); posts.len()]
        }
        other => vec![other; posts.len()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands;

    fn action(args: &[&str]) -> Action {
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::from(a.to_string())).collect();
        commands::parse(&args, 1_000)
    }

    fn batch_of(cmds: &[&[&str]], limits: &ConnLimits) -> Batch {
        let mut b = Batch::default();
        for (i, c) in cmds.iter().enumerate() {
            let a = action(c);
            assert!(Batch::joins(&a), "{c:?} should join");
            let Action::Write { op, post } = a else {
                panic!("{c:?} is not a write");
            };
            let args: Vec<Bytes> = c.iter().map(|a| Bytes::from(a.to_string())).collect();
            assert!(b.fits(cost(&args), limits));
            b.push(op, post, cost(&args), 1_000 + i as u64);
        }
        b
    }

    #[test]
    fn one_write_is_proposed_alone() {
        let limits = ConnLimits::default();
        let mut b = batch_of(&[&["SET", "k", "v"]], &limits);
        assert!(matches!(b.take(), Some(Plan::Write { now: 1_000, .. })));
        assert!(b.is_empty() && b.take().is_none());
    }

    #[test]
    fn consecutive_writes_become_one_entry_in_order() {
        let limits = ConnLimits::default();
        let mut b = batch_of(
            &[
                &["SET", "k", "v"],
                &["APPEND", "k", "w"],
                &["SETNX", "k", "w"],
                &["INCR", "n"],
            ],
            &limits,
        );
        let Some(Plan::Together { op, posts, now }) = b.take() else {
            panic!("not together")
        };
        assert_eq!(
            now, 1_000,
            "the batch is stamped with its first command's time"
        );
        let WriteOp::Exec { watched, ops } = op else {
            panic!("not an exec")
        };
        assert!(watched.is_empty());
        assert_eq!(ops.len(), 4);
        assert!(matches!(ops[0], Queued::Write(WriteOp::Set { .. })));
        assert!(matches!(
            ops[1],
            Queued::Write(WriteOp::Append(..) | WriteOp::AppendAtMost { .. })
        ));
        assert_eq!(posts[2], Post::OkToOne);
        // SETNX's reply is reshaped in its place; an error answers only its own command.
        let replies = split(
            Reply::Array(vec![
                Reply::Ok,
                Reply::Int(2),
                Reply::Nil,
                Reply::Fault(crate::store::Error::WrongType),
            ]),
            posts,
        );
        assert_eq!(replies[2], Reply::Int(0));
        assert_eq!(replies[0], Reply::Ok);
        assert!(replies[3].is_error());
    }

    #[test]
    fn a_failed_batch_answers_every_command_the_same() {
        let posts = vec![Post::None, Post::OkToOne, Post::None];
        let e = Reply::error("TRYAGAIN the outcome is unknown: timed out");
        assert_eq!(split(e.clone(), posts.clone()), vec![e; 3]);
        let short = split(Reply::Array(vec![Reply::Ok]), posts);
        assert!(short.iter().all(Reply::is_error));
    }

    #[test]
    fn what_cannot_join_ends_the_batch() {
        for c in [
            &["MULTI"][..],
            &["EXEC"],
            &["WATCH", "k"],
            &["KEYS", "*"],
            &["AUTH", "x"],
            &["GET", "k"],
            &["PING"],
            &["ECHO", "x"],
            &["GET"],
            &["NOSUCH"],
            &["INFO"],
            &["CONFIG", "GET", "*"],
            &["GETSET", "k", "v"],
            &["SET", "k", "v", "GET"],
            &["GETDEL", "k"],
            &["LPOP", "k", "5"],
            &["SPOP", "k"],
        ] {
            assert!(!Batch::joins(&action(c)), "{c:?} joined");
        }
        for c in [
            &["SET", "k", "v"][..],
            &["DEL", "k"],
            &["HSET", "h", "f", "v"],
        ] {
            assert!(Batch::joins(&action(c)), "{c:?} did not join");
        }
    }

    #[test]
    fn a_batch_is_bounded_in_commands_and_bytes() {
        let limits = ConnLimits {
            max_batch: 3,
            ..ConnLimits::default()
        };
        let b = batch_of(
            &[&["SET", "a", "1"], &["SET", "b", "2"], &["SET", "c", "3"]],
            &limits,
        );
        assert!(!b.fits(1, &limits));
        let mut limits = ConnLimits::default();
        limits.resp.max_frame = 200;
        let b = batch_of(&[&["SET", "a", "1"]], &limits);
        let used = cost(&[Bytes::from("SET"), Bytes::from("a"), Bytes::from("1")]);
        assert!(b.fits(200 - used, &limits));
        assert!(!b.fits(200 - used + 1, &limits));
    }
}
