//! A raw client of the legacy HTTP+SSE transport (protocol 2024-11-05), which rmcp does not ship.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

/// A raw legacy SSE client: the event stream and the POST endpoint it announced.
pub struct LegacyClient {
    http: reqwest::Client,
    events: std::pin::Pin<Box<dyn futures::Stream<Item = (String, String)> + Send>>,
    pub endpoint: String,
    bearer: Option<String>,
}

impl LegacyClient {
    /// Opens `GET {base}/sse` and reads the endpoint event.
    pub async fn open(base: &str) -> Self {
        let http = reqwest::Client::new();
        let response = http
            .get(format!("{base}/sse"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let mut events = Box::pin(sse_events(response));
        let (kind, data) = events.next().await.unwrap();
        assert_eq!(kind, "endpoint");
        assert!(data.starts_with("/messages?sessionId="), "{data}");
        let endpoint = format!("{base}{data}");
        Self {
            http,
            events,
            endpoint,
            bearer: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` with every later POST.
    pub fn with_bearer(mut self, token: &str) -> Self {
        self.bearer = Some(token.to_string());
        self
    }

    pub async fn try_post(
        &self,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut request = self
            .http
            .post(&self.endpoint)
            .header("content-type", "application/json");
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        request.body(body).send().await
    }

    pub async fn post(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.try_post(body).await.unwrap()
    }

    pub async fn send(&self, message: Value) {
        let response = self.post(message.to_string()).await;
        assert_eq!(response.status(), 202);
    }

    pub async fn next_message(&mut self) -> Value {
        let (kind, data) = tokio::time::timeout(Duration::from_secs(10), self.events.next())
            .await
            .expect("no event within 10 s")
            .expect("stream ended");
        assert_eq!(kind, "message");
        serde_json::from_str(&data).unwrap()
    }

    /// The next message, or `None` if none comes within `quiet`.
    pub async fn try_next_message(&mut self, quiet: Duration) -> Option<Value> {
        let (kind, data) = tokio::time::timeout(quiet, self.events.next())
            .await
            .ok()??;
        assert_eq!(kind, "message");
        Some(serde_json::from_str(&data).unwrap())
    }

    /// Reads until the response with `id`, collecting the notifications seen before it.
    pub async fn response(&mut self, id: u64) -> (Value, Vec<Value>) {
        let mut notifications = Vec::new();
        loop {
            let message = self.next_message().await;
            if message.get("id") == Some(&json!(id)) {
                return (message, notifications);
            }
            notifications.push(message);
        }
    }

    pub async fn initialize(&mut self) {
        self.send(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2024-11-05", "capabilities": {},
            "clientInfo": {"name": "raw-sse-test", "version": "0"}}}),
        )
        .await;
        let (init, _) = self.response(1).await;
        assert_eq!(init["result"]["protocolVersion"], "2024-11-05");
        assert!(init["result"]["capabilities"]["tools"].is_object());
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
    }

    /// Calls a tool with request id `id`; returns the JSON-RPC result.
    pub async fn call_tool(&mut self, id: u64, name: &str, arguments: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": super::remote::signed(name, arguments)}}))
            .await;
        let (response, _) = self.response(id).await;
        response["result"].clone()
    }
}

/// Parses an SSE body into (event, data) pairs, skipping comments (keep-alives).
pub fn sse_events(
    response: reqwest::Response,
) -> impl futures::Stream<Item = (String, String)> + Send {
    let bytes = response.bytes_stream();
    futures::stream::unfold(
        (bytes, String::new()),
        |(mut bytes, mut buffer)| async move {
            loop {
                if let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let mut kind = "message".to_string();
                    let mut data = Vec::new();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            kind = v.trim().to_string();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                        }
                    }
                    if data.is_empty() {
                        continue;
                    }
                    return Some(((kind, data.join("\n")), (bytes, buffer)));
                }
                let chunk = bytes.next().await?.ok()?;
                buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        },
    )
}
