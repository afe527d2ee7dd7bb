//! A bound on the memory that messages still arriving can hold.
//!
//! tonic reads a message's 5-byte gRPC header, reserves room for the length it declares (up to
//! [`GrpcOptions::max_message_bytes`](crate::GrpcOptions::max_message_bytes)) and keeps every
//! byte that arrives until the message is whole. HTTP/2 flow control does not bound that: the
//! window opens again as tonic takes the bytes. So a caller that starts many large messages
//! and never finishes them — on many streams, over many connections — makes the node hold
//! all of them.
//!
//! [`Receiving`] wraps a service and meters each request's body. A message that is not whole
//! within the body chunk that starts it takes its declared length from a [`ReceiveBudget`]
//! shared by every call of the service, and gives it back when its last byte has arrived or
//! its call ends. A message that finds the budget spent, or is not whole within
//! [`ReceiveBudget::allowance`] of its header, and a call whose first message has not started
//! within the allowance of an empty one from the call's start, fail their call with
//! [`ErrorCode::Busy`](crate::status::ErrorCode::Busy): nothing was applied, and a later
//! attempt may succeed. It fails rather than waits: a waiting stream's unread bytes would hold
//! its connection's HTTP/2 window and stall every other call on that connection (a peer's
//! heartbeats among them). Small messages that arrive in one chunk, the common case, take
//! nothing.
//!
//! A service whose calls each carry one message ([`Receiving::until_answered`]: the cluster
//! service) counts every message, small ones too, and keeps it counted until its call is
//! answered: the budget then bounds what the node holds of callers' writes while it
//! replicates them, not only while they arrive.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::Context;
use std::task::Poll;
use std::task::ready;
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body::Frame;
use http_body::SizeHint;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tonic::Code;
use tonic::codegen::http;

use crate::status::ErrorCode;
use crate::status::status;

/// gRPC's length-prefixed framing: a compression flag, then the length as a big-endian u32.
const HEADER: usize = 5;

/// The least time anything the server receives may take to arrive: a message once its header
/// is in, a snapshot once its receive slot is taken.
const LEAST_ARRIVAL: Duration = Duration::from_secs(30);

/// How long `bytes` take to move at `min_rate` bytes per second (taken as at least 1): the
/// time a transfer of that size is allowed beyond its fixed allowance, on the sending side and
/// the receiving side alike.
pub(crate) fn transfer_time(bytes: u64, min_rate: u64) -> Duration {
    Duration::from_secs(bytes / min_rate.max(1))
}

/// How long `bytes` may take to arrive: the longer of 30 s and `request_timeout`, plus their
/// [`transfer_time`] at `min_rate` ([`GrpcOptions::min_transfer_rate`](crate::GrpcOptions)).
pub(crate) fn arrival_limit(bytes: u64, request_timeout: Duration, min_rate: u64) -> Duration {
    LEAST_ARRIVAL
        .max(request_timeout)
        .saturating_add(transfer_time(bytes, min_rate))
}

/// How long a node sending a snapshot of `bytes` waits for it to be taken: `soft_ttl` (its
/// RPC deadline, three quarters of its request timeout) plus their [`transfer_time`] at
/// `min_rate`. Never longer than the receiver's [`arrival_limit`] for the same size and rate,
/// for request timeouts up to 40 s: the sender gives up first.
pub(crate) fn snapshot_send_limit(soft_ttl: Duration, bytes: u64, min_rate: u64) -> Duration {
    soft_ttl.saturating_add(transfer_time(bytes, min_rate))
}

/// What every call of one service may hold in partly received messages. Clones share it.
#[derive(Clone)]
pub(crate) struct ReceiveBudget(Arc<Inner>);

struct Inner {
    permits: Arc<Semaphore>,
    /// The budget, in bytes.
    bytes: usize,
    /// Messages declaring more than this are refused by tonic on their header; they take
    /// nothing.
    max_message: usize,
    /// The node's request timeout, which lengthens [`arrival_limit`] if it is longer.
    request_timeout: Duration,
    /// The slowest average rate a message may arrive at, in bytes per second.
    min_rate: u64,
}

impl ReceiveBudget {
    /// A budget of `bytes` (raised to `max_message` if smaller, so every message the service
    /// accepts can arrive) for a service whose messages are at most `max_message` bytes; a
    /// message gets [`arrival_limit`] of its declared length at `min_rate` bytes per second to
    /// arrive.
    pub(crate) fn new(
        bytes: usize,
        max_message: usize,
        request_timeout: Duration,
        min_rate: u64,
    ) -> ReceiveBudget {
        let bytes = bytes.max(max_message).min(Semaphore::MAX_PERMITS);
        ReceiveBudget(Arc::new(Inner {
            permits: Arc::new(Semaphore::new(bytes)),
            bytes,
            max_message,
            request_timeout,
            min_rate,
        }))
    }

    /// How long a message declaring `len` bytes may take to arrive, from its header on.
    pub(crate) fn allowance(&self, len: u32) -> Duration {
        arrival_limit(u64::from(len), self.0.request_timeout, self.0.min_rate)
    }

    /// Bytes of the budget not held by any message.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.0.permits.available_permits()
    }
}

/// A service whose requests' bodies are metered against a [`ReceiveBudget`].
#[derive(Clone)]
pub(crate) struct Receiving<S> {
    inner: S,
    budget: ReceiveBudget,
    until_answered: bool,
}

impl<S> Receiving<S> {
    /// `inner`, with its requests' unfinished messages metered against `budget`.
    pub(crate) fn new(inner: S, budget: ReceiveBudget) -> Receiving<S> {
        Receiving {
            inner,
            budget,
            until_answered: false,
        }
    }

    /// `inner`, whose calls each carry one message, with every message metered against
    /// `budget` from its header until its call is answered.
    pub(crate) fn until_answered(inner: S, budget: ReceiveBudget) -> Receiving<S> {
        Receiving {
            inner,
            budget,
            until_answered: true,
        }
    }
}

/// The shares of a call's whole messages, kept until the call is answered.
type Kept = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

/// A call's response future; completing (or being dropped) gives back the shares its messages
/// kept.
pub(crate) struct Answered<F> {
    inner: F,
    kept: Option<Kept>,
}

impl<F: Future + Unpin> Future for Answered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let out = ready!(Pin::new(&mut this.inner).poll(cx));
        this.kept = None;
        Poll::Ready(out)
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Receiving<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Receiving<S>
where
    S: tower::Service<http::Request<Metered<B>>>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Answered<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let kept = self.until_answered.then(Kept::default);
        let budget = self.budget.clone();
        let metered = kept.clone();
        Answered {
            inner: self
                .inner
                .call(req.map(|body| Metered::new(body, budget, metered))),
            kept,
        }
    }
}

/// Why a body stops being read.
enum Refused {
    /// The budget has no room for the message.
    Spent,
    /// A second message in a call that carries one: it could put off the end of the call for
    /// ever, one empty message at a time.
    SecondMessage,
}

/// A request body whose partly received messages hold their declared length of the budget.
pub(crate) struct Metered<B> {
    inner: B,
    budget: ReceiveBudget,
    /// The current message's header as far as it has arrived.
    header: [u8; HEADER],
    header_len: usize,
    /// Bytes of the current message's body still to come (once its header is whole).
    remaining: u32,
    /// What the current message holds of the budget.
    held: Option<OwnedSemaphorePermit>,
    /// When the current message must be whole (or, before the header of the call's first
    /// message is whole, when that header must be: `header_by`).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the header of the call's first message must be whole, until it is. The timer is
    /// made only if the body has to wait: a message that comes at once costs none.
    header_by: Option<tokio::time::Instant>,
    /// Where whole messages' shares go, when they stay counted until the call is answered;
    /// then every message takes its share on its header.
    kept: Option<Kept>,
    /// The body failed; it yields nothing more.
    failed: bool,
    /// A message of the call is whole: for a call of one message, no other may follow.
    whole: bool,
}

impl<B> Metered<B> {
    fn new(inner: B, budget: ReceiveBudget, kept: Option<Kept>) -> Metered<B> {
        // A call must start its first message: until that header is whole, it has the
        // allowance of an empty message from the call's start. Otherwise a caller could open
        // streams, send nothing (or part of a header) and hold a handler on each for ever.
        // (A stream's later messages may be far apart: a leader's appends to an idle follower.)
        let header_by = Some(tokio::time::Instant::now() + budget.allowance(0));
        Metered {
            inner,
            budget,
            header: [0; HEADER],
            header_len: 0,
            remaining: 0,
            held: None,
            deadline: None,
            header_by,
            kept,
            failed: false,
            whole: false,
        }
    }

    /// Follows the framing through `chunk`, taking the budget's share for the messages that
    /// need one. Fails if one finds the budget spent, or starts a second message in a call of
    /// one.
    fn scan(&mut self, chunk: &[u8]) -> Result<(), Refused> {
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.header_len < HEADER {
                let take = (HEADER - self.header_len).min(rest.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&rest[..take]);
                self.header_len += take;
                rest = &rest[take..];
                if self.header_len == HEADER {
                    if self.whole && self.kept.is_some() {
                        return Err(Refused::SecondMessage);
                    }
                    self.remaining = self.declared();
                    // From here the message has the allowance of its declared length.
                    self.deadline = None;
                    self.header_by = None;
                    if self.kept.is_some() {
                        self.take()?;
                    }
                    if self.remaining == 0 {
                        self.finish();
                    }
                }
            } else {
                let take = rest.len().min(self.remaining as usize);
                // `take` is at most `remaining`, a u32.
                self.remaining -= take as u32;
                rest = &rest[take..];
                if self.remaining == 0 {
                    self.finish();
                }
            }
        }
        let unfinished = self.header_len == HEADER && self.remaining > 0;
        if !unfinished || self.refused_by_tonic() {
            return Ok(());
        }
        if self.deadline.is_none() {
            let allowance = self.budget.allowance(self.declared());
            self.deadline = Some(Box::pin(tokio::time::sleep(allowance)));
        }
        self.take()
    }

    /// The current message's declared length (its header is whole).
    fn declared(&self) -> u32 {
        let [_, a, b, c, d] = self.header;
        u32::from_be_bytes([a, b, c, d])
    }

    /// Whether the current message is larger than the service accepts: tonic refuses it on
    /// its header, before keeping any of it, so it takes nothing.
    fn refused_by_tonic(&self) -> bool {
        self.declared() as usize > self.budget.0.max_message
    }

    /// Takes the current message's share, unless it has it or is too large to be accepted.
    fn take(&mut self) -> Result<(), Refused> {
        if self.held.is_some() || self.refused_by_tonic() {
            return Ok(());
        }
        let permits = self.budget.0.permits.clone();
        self.held = Some(
            permits
                .try_acquire_many_owned(self.declared())
                .map_err(|_| Refused::Spent)?,
        );
        Ok(())
    }

    /// The current message is whole: its share is given back, or kept until the call is
    /// answered.
    fn finish(&mut self) {
        self.header_len = 0;
        self.deadline = None;
        self.whole = true;
        let Some(kept) = self.kept.as_ref() else {
            self.held = None;
            return;
        };
        // The call's one message is whole; tonic reads on to the end of the body before the
        // handler runs, and the message's share stays counted until the call is answered. So
        // the end (or another header) has an empty message's allowance: a caller that sends
        // a message and never ends its call would otherwise keep that share for ever.
        self.header_by = Some(tokio::time::Instant::now() + self.budget.allowance(0));
        let Some(share) = self.held.take() else {
            return;
        };
        let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
        match kept.as_mut() {
            Some(all) => all.merge(share),
            None => *kept = Some(share),
        }
    }

    fn fail(
        &mut self,
        message: String,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::codegen::StdError>>> {
        self.fail_as(Code::Unavailable, ErrorCode::Busy, message)
    }

    fn fail_as(
        &mut self,
        code: Code,
        error: ErrorCode,
        message: String,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::codegen::StdError>>> {
        self.failed = true;
        self.held = None;
        self.deadline = None;
        Poll::Ready(Some(Err(Box::new(status(code, error, message)))))
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if let Some(at) = this.header_by.take() {
                    this.deadline = Some(Box::pin(tokio::time::sleep_until(at)));
                }
                if let Some(deadline) = this.deadline.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    return this.fail(
                        "a message did not arrive in time; the node dropped what it had of it"
                            .into(),
                    );
                }
                return Poll::Pending;
            }
        };
        let frame = match frame {
            None => {
                this.held = None;
                this.deadline = None;
                return Poll::Ready(None);
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            Some(Ok(frame)) => frame,
        };
        let chunk = match frame.into_data() {
            Ok(chunk) => chunk,
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        match this.scan(&chunk) {
            Ok(()) => {}
            Err(Refused::Spent) => {
                return this.fail(format!(
                    "this node already holds its limit of {} bytes of callers' messages; try \
                     again later",
                    this.budget.0.bytes
                ));
            }
            Err(Refused::SecondMessage) => {
                return this.fail_as(
                    Code::InvalidArgument,
                    ErrorCode::InvalidRequest,
                    "a call of this service carries one message".into(),
                );
            }
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.failed {
            return SizeHint::with_exact(0);
        }
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_util::FutureExt;
    use futures_util::future::poll_fn;
    use tokio::sync::mpsc;

    use super::*;

    /// A request body fed chunk by chunk.
    struct Chunks(mpsc::UnboundedReceiver<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
        }
    }

    const BUDGET: usize = 1000;
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// `GrpcOptions::min_transfer_rate`'s default.
    const RATE: u64 = 8 << 20;

    fn budget() -> ReceiveBudget {
        ReceiveBudget::new(BUDGET, BUDGET, REQUEST_TIMEOUT, RATE)
    }

    fn body(budget: &ReceiveBudget) -> (mpsc::UnboundedSender<Bytes>, Metered<Chunks>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Metered::new(Chunks(rx), budget.clone(), None))
    }

    fn header(len: u32) -> Vec<u8> {
        let mut h = vec![0];
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    fn message(len: u32) -> Vec<u8> {
        let mut m = header(len);
        m.resize(HEADER + len as usize, 7);
        m
    }

    /// Asserts that a new call can start a message declaring `len` bytes.
    fn assert_room_for(budget: &ReceiveBudget, len: u32) {
        let (tx, mut b) = body(budget);
        tx.send(header(len).into()).unwrap();
        assert_eq!(next(&mut b), Some(Ok(HEADER)), "no room for {len} bytes");
    }

    /// The body's next frame if one is ready now: `Some(Ok(bytes))`, `Some(Err(code))`, or
    /// `None` while it waits.
    fn next(body: &mut Metered<Chunks>) -> Option<Result<usize, ErrorCode>> {
        let frame = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).now_or_never()?;
        Some(match frame {
            Some(Ok(f)) => Ok(f.into_data().map(|d| d.len()).unwrap_or_default()),
            Some(Err(e)) => Err(e
                .downcast_ref::<tonic::Status>()
                .and_then(ErrorCode::of)
                .expect("a raftkit status")),
            None => Ok(0),
        })
    }

    #[tokio::test]
    async fn messages_whole_in_their_chunk_take_nothing() {
        let budget = budget();
        let (tx, mut body) = body(&budget);
        let mut two = message(900);
        two.extend(message(900));
        tx.send(two.into()).unwrap();
        assert_eq!(next(&mut body), Some(Ok(2 * (HEADER + 900))));
        assert_eq!(budget.available(), BUDGET);
    }

    #[tokio::test]
    async fn an_unfinished_message_holds_its_declared_length_until_its_last_byte() {
        let budget = budget();
        let (tx, mut body) = body(&budget);
        // One whole message, then the start of another, its header split over two chunks.
        let mut first = message(10);
        first.extend(&header(600)[..2]);
        tx.send(first.into()).unwrap();
        assert_eq!(next(&mut body), Some(Ok(HEADER + 10 + 2)));
        assert_eq!(budget.available(), BUDGET);
        let mut rest = header(600)[2..].to_vec();
        rest.extend([7; 100]);
        tx.send(rest.into()).unwrap();
        assert_eq!(next(&mut body), Some(Ok(103)));
        assert_eq!(budget.available(), BUDGET - 600);
        tx.send(vec![7; 499].into()).unwrap();
        assert_eq!(next(&mut body), Some(Ok(499)));
        assert_eq!(budget.available(), BUDGET - 600);
        // The last byte, and the next message's start in the same chunk.
        let mut last = vec![7];
        last.extend(&header(300)[..]);
        tx.send(last.into()).unwrap();
        assert_eq!(next(&mut body), Some(Ok(1 + HEADER)));
        assert_eq!(budget.available(), BUDGET - 300);
        drop(body);
        assert_eq!(
            budget.available(),
            BUDGET,
            "a dropped call gives its share back"
        );
    }

    #[tokio::test]
    async fn a_message_past_the_budget_fails_busy_and_others_go_on() {
        let budget = budget();
        let (tx_a, mut a) = body(&budget);
        let (tx_b, mut b) = body(&budget);
        tx_a.send(header(700).into()).unwrap();
        assert_eq!(next(&mut a), Some(Ok(HEADER)));
        tx_b.send(header(700).into()).unwrap();
        assert_eq!(next(&mut b), Some(Err(ErrorCode::Busy)), "no room");
        assert_eq!(next(&mut b), Some(Ok(0)), "a failed body ends");
        // Small whole messages still pass on a third call.
        let (tx_c, mut c) = body(&budget);
        tx_c.send(message(10).into()).unwrap();
        assert_eq!(next(&mut c), Some(Ok(HEADER + 10)));
        tx_a.send(vec![7; 700].into()).unwrap();
        assert_eq!(next(&mut a), Some(Ok(700)));
        assert_eq!(budget.available(), BUDGET);
        assert_room_for(&budget, 700);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_message_fails_busy_after_its_allowance_and_frees_its_share() {
        let budget = budget();
        let (tx_a, mut a) = body(&budget);
        tx_a.send(header(700).into()).unwrap();
        assert_eq!(next(&mut a), Some(Ok(HEADER)));
        tokio::time::advance(budget.allowance(700) - Duration::from_millis(1)).await;
        assert_eq!(next(&mut a), None, "still within its allowance");
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(next(&mut a), Some(Err(ErrorCode::Busy)));
        assert_eq!(budget.available(), BUDGET);
        assert_room_for(&budget, 700);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_starts_no_message_fails_busy_after_an_empty_messages_allowance() {
        let budget = budget();
        // Calls of a service of streams, and of one that keeps each call's one message counted.
        let start = |sent: &[u8], kept: Option<Kept>| {
            let (tx, rx) = mpsc::unbounded_channel();
            let mut body = Metered::new(Chunks(rx), budget.clone(), kept);
            if !sent.is_empty() {
                tx.send(Bytes::copy_from_slice(sent)).unwrap();
                assert_eq!(next(&mut body), Some(Ok(sent.len())));
            }
            (tx, body)
        };
        // Nothing at all, and part of a header.
        let (_nothing_tx, mut nothing) = start(&[], None);
        let (_part_tx, mut part) = start(&header(10)[..3], Some(Kept::default()));
        // A header in time: from it on, the message has its own allowance.
        let (late_tx, mut late) = start(&[], Some(Kept::default()));
        // A stream whose first message came at once and whose next one is long in coming.
        let (_idle_tx, mut idle) = start(&message(10), None);
        assert_eq!(next(&mut nothing), None);
        assert_eq!(next(&mut part), None);
        assert_eq!(next(&mut late), None);
        tokio::time::advance(budget.allowance(0) - Duration::from_millis(1)).await;
        late_tx.send(header(700).into()).unwrap();
        assert_eq!(next(&mut late), Some(Ok(HEADER)));
        assert_eq!(next(&mut nothing), None, "still within its allowance");
        assert_eq!(next(&mut part), None, "still within its allowance");
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(next(&mut nothing), Some(Err(ErrorCode::Busy)));
        assert_eq!(next(&mut part), Some(Err(ErrorCode::Busy)));
        assert_eq!(
            next(&mut late),
            None,
            "its message's allowance started at its header"
        );
        tokio::time::advance(budget.allowance(700)).await;
        assert_eq!(next(&mut late), Some(Err(ErrorCode::Busy)));
        assert_eq!(
            next(&mut idle),
            None,
            "a stream's later messages have no start deadline"
        );
        assert_eq!(budget.available(), BUDGET);
    }

    #[tokio::test]
    async fn a_message_larger_than_the_service_accepts_takes_nothing() {
        let budget = budget();
        let (tx, mut body) = body(&budget);
        tx.send(header(BUDGET as u32 + 1).into()).unwrap();
        assert_eq!(next(&mut body), Some(Ok(HEADER)));
        assert_eq!(budget.available(), BUDGET);
    }

    /// Starts a call of `handler`, metered against `budget` until it is answered, whose body
    /// begins with a message of 300 bytes: the body's sender (dropping it ends the body) and
    /// the call's task.
    async fn start_call<H>(
        handler: H,
        budget: &ReceiveBudget,
    ) -> (
        mpsc::UnboundedSender<Bytes>,
        tokio::task::JoinHandle<Result<(), Infallible>>,
    )
    where
        H: tower::Service<http::Request<Metered<Chunks>>, Response = (), Error = Infallible>,
        H::Future: Unpin + Send + 'static,
    {
        use tower::Service;
        use tower::ServiceExt;

        let mut service = Receiving::until_answered(handler, budget.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(message(300).into()).unwrap();
        let call = service
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(Chunks(rx)));
        (tx, tokio::spawn(call))
    }

    #[tokio::test]
    async fn a_call_of_one_message_keeps_it_counted_until_the_call_is_answered() {
        let budget = budget();
        let answer = Arc::new(tokio::sync::Notify::new());
        let (frames_tx, mut frames) = mpsc::unbounded_channel();
        let handler = tower::service_fn({
            let answer = answer.clone();
            move |req: http::Request<Metered<Chunks>>| {
                let (frames_tx, answer) = (frames_tx.clone(), answer.clone());
                Box::pin(async move {
                    let mut body = req.into_body();
                    // Reads the message, as tonic does, then drops the body and works on
                    // until told to answer.
                    while let Some(f) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                        let _ = frames_tx.send(f.is_ok());
                    }
                    drop(body);
                    answer.notified().await;
                    Ok::<_, Infallible>(())
                })
            }
        });
        let (tx, call) = start_call(handler, &budget).await;
        drop(tx);
        let within = |f| tokio::time::timeout(Duration::from_secs(10), f);
        assert_eq!(within(frames.recv()).await.unwrap(), Some(true));
        assert_eq!(
            budget.available(),
            BUDGET - 300,
            "a whole message in one chunk is counted while its call is handled"
        );
        // Another call's message finds the budget short, though it comes whole.
        let (tx, rx) = mpsc::unbounded_channel();
        let mut other = Metered::new(Chunks(rx), budget.clone(), Some(Kept::default()));
        tx.send(message(800).into()).unwrap();
        assert_eq!(next(&mut other), Some(Err(ErrorCode::Busy)));
        answer.notify_one();
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(budget.available(), BUDGET, "answered: the share is back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_ends_after_its_message_gives_its_share_back() {
        let budget = budget();
        // Reads the body to its end, as tonic does for a unary call, and answers.
        let handler = tower::service_fn(|req: http::Request<Metered<Chunks>>| {
            Box::pin(async move {
                let mut body = req.into_body();
                while let Some(Ok(_)) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {}
                Ok::<_, Infallible>(())
            })
        });
        // The sender stays: the call's body never ends.
        let (tx, call) = start_call(handler, &budget).await;
        // The handler reads the message and waits for the rest of the body.
        tokio::task::yield_now().await;
        assert_eq!(budget.available(), BUDGET - 300);
        tokio::time::advance(budget.allowance(0) - Duration::from_millis(1)).await;
        assert!(!call.is_finished(), "still within its allowance");
        tokio::time::advance(Duration::from_millis(2)).await;
        tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .expect("the call ends once the end of its body is overdue")
            .unwrap()
            .unwrap();
        assert_eq!(budget.available(), BUDGET, "its share is back");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_of_one_message_cannot_put_off_its_end_with_more_messages() {
        let budget = budget();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut body = Metered::new(Chunks(rx), budget.clone(), Some(Kept::default()));
        tx.send(message(300).into()).unwrap();
        assert_eq!(next(&mut body), Some(Ok(HEADER + 300)));
        // An empty message just before the end is due would otherwise start the wait again.
        tokio::time::advance(budget.allowance(0) - Duration::from_millis(1)).await;
        tx.send(message(0).into()).unwrap();
        assert_eq!(next(&mut body), Some(Err(ErrorCode::InvalidRequest)));
        assert_eq!(next(&mut body), Some(Ok(0)), "a failed body ends");
    }

    #[test]
    fn the_budget_fits_the_largest_message_and_slow_large_messages_get_longer() {
        let b = ReceiveBudget::new(10, 1000, REQUEST_TIMEOUT, RATE);
        assert_eq!(b.available(), 1000);
        let least = Duration::from_secs(30);
        assert_eq!(b.allowance(0), least);
        assert_eq!(b.allowance(64 << 20), least + Duration::from_secs(8));
        let slow_link = ReceiveBudget::new(10, 1000, REQUEST_TIMEOUT, 1 << 20);
        assert_eq!(
            slow_link.allowance(64 << 20),
            least + Duration::from_secs(64),
            "a lower rate"
        );
        let crawl = ReceiveBudget::new(10, 1000, REQUEST_TIMEOUT, 0);
        assert_eq!(
            crawl.allowance(64 << 20),
            least + Duration::from_secs(64 << 20),
            "a rate of 0 is taken as one byte per second"
        );
        let slow = ReceiveBudget::new(10, 1000, Duration::from_secs(60), RATE);
        assert_eq!(
            slow.allowance(0),
            Duration::from_secs(60),
            "a longer request timeout"
        );
    }
}
