//! Instruction data: Alpaca records and chat conversations. The loss is taken on the response
//! only (and the EOS / `<|im_end|>` that ends it), so the model learns to answer, not to write
//! prompts.

use crate::error::Result;
use crate::example::{encode_prompt_answer, encode_spans, Example};
use crate::formats::fields::Fields;
use crate::templates::{alpaca_prompt, ChatMessage, ChatTemplate};
use crate::tokenizer::TextTokenizer;

/// An Alpaca record `{instruction, input, output}` (`input` may be absent, null or empty): the
/// Stanford prompt, then the output and EOS, learned.
pub(crate) fn encode_alpaca(fields: &Fields<'_>, tokenizer: &TextTokenizer, eos: u32) -> Result<Example> {
    let instruction = fields.str("instruction")?;
    let input = fields.opt_str("input")?.unwrap_or("");
    let output = fields.str("output")?;
    if output.is_empty() {
        return Err(fields.error("output", "is empty: there is nothing to learn"));
    }
    encode_prompt_answer(tokenizer, &alpaca_prompt(instruction, input), output, Some(eos))
}

/// A chat record `{"messages": [{"role", "content"}, ...]}` rendered with `template`; every
/// assistant turn is learned.
pub(crate) fn encode_chat(fields: &Fields<'_>, tokenizer: &TextTokenizer, template: &ChatTemplate) -> Result<Example> {
    let messages = parse_messages(fields)?;
    let rendered = template.render(&messages, false).map_err(|e| fields.error("messages", e.to_string()))?;
    if rendered.assistant_spans.is_empty() {
        return Err(fields.error("messages", "has no assistant turn: there is nothing to learn"));
    }
    encode_spans(tokenizer, &rendered.text, &rendered.assistant_spans, template.add_special_tokens())
}

pub(crate) fn parse_messages(fields: &Fields<'_>) -> Result<Vec<ChatMessage>> {
    let items = fields.array("messages")?;
    if items.is_empty() {
        return Err(fields.error("messages", "is empty"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let message = fields.element("messages", i, item)?;
            Ok(ChatMessage { role: message.str("role")?.to_owned(), content: message.str("content")?.to_owned() })
        })
        .collect()
}
