use super::*;

#[test]
fn which_head_deadline_applies() {
    let t0 = tokio::time::Instant::now();
    let s = Duration::from_secs;
    let request = HeadWait {
        idle: s(300),
        idle_is_eof: true,
        head: Some(s(10)),
    };
    let response = HeadWait {
        idle: s(30),
        idle_is_eof: false,
        head: None,
    };
    // (wait, first byte after t0, expected deadline after t0, quiet)
    let cases = [
        // Idle between requests: the idle timeout, then a quiet close.
        (request, None, s(300), true),
        // A head started at once must end 10 s later.
        (request, Some(s(0)), s(10), false),
        // A head started late gets its full 10 s from its first byte,
        // even past the idle deadline.
        (request, Some(s(295)), s(305), false),
        (request, Some(s(20)), s(30), false),
        // Response heads: one deadline for the whole head, a timeout.
        (response, None, s(30), false),
        (response, Some(s(29)), s(30), false),
    ];
    for (wait, first, deadline, quiet) in cases {
        let got = wait.deadline(t0, first.map(|d| t0 + d));
        assert_eq!(got, (t0 + deadline, quiet), "{wait:?} first byte {first:?}");
    }
}
