//! The change feed's wire format (`GET /v1/events`, server-sent events):
//! a pure parser of its frames for the CLI and the tests.

/// One server-sent event: its `id` (send it back as `Last-Event-ID` to
/// resume), its `event` (`instance`, `job` or `server`) and its `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    pub id: String,
    pub event: String,
    pub data: serde_json::Value,
}

/// Takes the complete frames off the front of `buf` (what was read so far)
/// and returns their events; comments (keep-alives) are dropped, a partial
/// frame stays in `buf`.
pub fn take_frames(buf: &mut String) -> Vec<FeedEvent> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let frame: String = buf.drain(..end + 2).collect();
        let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
        for line in frame.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if !data.is_empty() {
            out.push(FeedEvent {
                id,
                event,
                data: serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data)),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_are_taken_whole_and_keep_alives_dropped() {
        let mut buf = ":\n\nid: 1-2\nevent: job\ndata: {\"a\":1}\n\nid: 3-4\nda".to_string();
        let got = super::take_frames(&mut buf);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].id.as_str(), got[0].event.as_str()), ("1-2", "job"));
        assert_eq!(got[0].data["a"], 1);
        assert_eq!(buf, "id: 3-4\nda");
    }
}
