use serde_json::json;

use super::*;

fn weather() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}])
}

#[test]
fn tools_parse_with_defaults_and_their_rules() {
    let tools = parse_tools(&weather(), "tools").unwrap();
    assert_eq!(tools[0].name, "get_weather");
    assert_eq!(tools[0].description.as_deref(), Some("Weather now"));
    let bare = parse_tools(
        &json!([{"type": "function", "function": {"name": "f"}}]),
        "tools",
    );
    assert_eq!(
        bare.unwrap()[0].parameters,
        json!({"type": "object", "properties": {}})
    );

    let err = |v: Value| parse_tools(&v, "tools").unwrap_err().param.unwrap();
    assert_eq!(err(json!({"a": 1})), "tools");
    assert_eq!(err(json!([{"type": "retrieval"}])), "tools[0].type");
    assert_eq!(
        err(json!([{"type": "function", "function": {}}])),
        "tools[0].function.name"
    );
    assert_eq!(
        err(json!([{"type": "function", "function": {"name": "has space"}}])),
        "tools[0].function.name"
    );
    let twice = json!([{"type": "function", "function": {"name": "f"}},
                       {"type": "function", "function": {"name": "f"}}]);
    assert_eq!(err(twice), "tools[1].function.name");
    for schema in [
        json!("string"),
        json!({"type": "string"}),
        json!({"type": "object", "properties": {"a": {"type": "text"}}}),
        json!({"type": "object", "properties": []}),
        json!({"type": "object", "required": "a"}),
        json!({"type": "object", "properties": {"a": {"type": "array", "items": 3}}}),
    ] {
        let t = json!([{"type": "function", "function": {"name": "f", "parameters": schema}}]);
        assert!(
            err(t).starts_with("tools[0].function.parameters"),
            "{schema} accepted"
        );
    }
}

#[test]
fn tool_choice_must_name_an_offered_function() {
    let tools = parse_tools(&weather(), "tools").unwrap();
    assert_eq!(
        parse_tool_choice(None, &tools).unwrap(),
        Some(ToolChoice::Auto)
    );
    assert_eq!(
        parse_tool_choice(Some(&json!("none")), &tools).unwrap(),
        None
    );
    assert_eq!(
        parse_tool_choice(Some(&json!("required")), &tools).unwrap(),
        Some(ToolChoice::Required)
    );
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    assert_eq!(
        parse_tool_choice(Some(&named), &tools).unwrap(),
        Some(ToolChoice::Named("get_weather".into()))
    );
    let unknown = json!({"type": "function", "function": {"name": "nope"}});
    for bad in [unknown, json!("always"), json!(3)] {
        let e = parse_tool_choice(Some(&bad), &tools).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
    }
    assert!(parse_tool_choice(Some(&json!("auto")), &[]).is_err());
}

#[test]
fn calls_render_in_the_documented_format_and_force_schemas() {
    let calls = parse_tool_calls(
        &json!([{"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]),
        "messages[1].tool_calls",
    )
    .unwrap();
    assert_eq!(
        calls_text(&calls),
        r#"{"name": "get_weather", "arguments": {"city":"Paris"}}"#
    );
    let two = [calls[0].clone(), calls[0].clone()];
    assert!(calls_text(&two).starts_with("[{"));
    let e = parse_tool_calls(&json!([{"function": {"arguments": "{}"}}]), "m").unwrap_err();
    assert_eq!(e.param.as_deref(), Some("m[0].function.name"));

    let tools = parse_tools(&weather(), "tools").unwrap();
    assert_eq!(call_schema(&tools, &ToolChoice::Auto, true), None);
    let named = call_schema(&tools, &ToolChoice::Named("get_weather".into()), true).unwrap();
    assert_eq!(named["properties"]["name"]["const"], "get_weather");
    let list = call_schema(&tools, &ToolChoice::Required, true).unwrap();
    assert_eq!(list["type"], "array");
    assert!(call_schema(&tools, &ToolChoice::Required, false).unwrap()["anyOf"].is_array());
    let text = tools_system_text(&tools, false);
    assert!(text.contains("\"name\":\"get_weather\"") && !text.contains("list"));
}

#[test]
fn templates_with_a_tools_variable_are_recognised() {
    assert!(template_handles_tools(
        "{% if tools %}{{ tools | tojson }}{% endif %}"
    ));
    assert!(!template_handles_tools(
        "{{ xml_tools }}{{ message['content'] }}"
    ));
    // (ChatML without tools is checked beside the template, in model_dir::template.)
}
