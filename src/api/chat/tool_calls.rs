//! Tool calls as OpenAI renders them: in a message, or streamed as pieces the SDK joins.

use mistralrs::core::ToolCallResponse;

use super::types::{
    ChatCompletionMessageToolCall, ChoiceDeltaFunction, ChoiceDeltaToolCall, FunctionCall,
};

/// OpenAI's call ids are `call_…`; the engine's are `call-<uuid>`.
fn call_id(engine_id: &str) -> String {
    let tail: String = engine_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .skip(4)
        .take(24)
        .collect();
    format!("call_{tail}")
}

/// The calls of a finished message.
pub fn tool_calls(calls: &[ToolCallResponse]) -> Vec<ChatCompletionMessageToolCall> {
    calls
        .iter()
        .map(|c| ChatCompletionMessageToolCall {
            id: call_id(&c.id),
            kind: "function",
            function: FunctionCall {
                name: c.function.name.clone(),
                arguments: c.function.arguments.clone(),
            },
        })
        .collect()
}

/// The streamed pieces of one call, as OpenAI sends them: id, type, name and empty arguments
/// first, then the arguments in pieces of a few characters.
pub fn tool_call_pieces(index: usize, call: &ToolCallResponse) -> Vec<ChoiceDeltaToolCall> {
    let mut pieces = vec![ChoiceDeltaToolCall {
        index,
        id: Some(call_id(&call.id)),
        kind: Some("function"),
        function: ChoiceDeltaFunction {
            name: Some(call.function.name.clone()),
            arguments: String::new(),
        },
    }];
    let chars: Vec<char> = call.function.arguments.chars().collect();
    for piece in chars.chunks(16) {
        pieces.push(ChoiceDeltaToolCall {
            index,
            id: None,
            kind: None,
            function: ChoiceDeltaFunction {
                name: None,
                arguments: piece.iter().collect(),
            },
        });
    }
    pieces
}
