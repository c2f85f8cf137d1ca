//! Tool calls as OpenAI renders them: in a message, or streamed as pieces the SDK joins.

use crate::serve::events::ToolCallOut;

use super::types::{
    ChatCompletionMessageToolCall, ChoiceDeltaFunction, ChoiceDeltaToolCall, FunctionCall,
};

/// The calls of a finished message.
pub fn tool_calls(calls: &[ToolCallOut]) -> Vec<ChatCompletionMessageToolCall> {
    calls
        .iter()
        .map(|c| ChatCompletionMessageToolCall {
            id: c.id.clone(),
            kind: "function",
            function: FunctionCall {
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            },
        })
        .collect()
}

/// The streamed pieces of one call, as OpenAI sends them: id, type, name and empty arguments
/// first, then the arguments in pieces of a few characters.
pub fn tool_call_pieces(index: usize, call: &ToolCallOut) -> Vec<ChoiceDeltaToolCall> {
    let mut pieces = vec![ChoiceDeltaToolCall {
        index,
        id: Some(call.id.clone()),
        kind: Some("function"),
        function: ChoiceDeltaFunction {
            name: Some(call.name.clone()),
            arguments: String::new(),
        },
    }];
    let chars: Vec<char> = call.arguments.chars().collect();
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
