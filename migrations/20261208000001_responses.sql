-- Stored responses (`POST /v1/responses` with `store`, the default): what `GET /v1/responses/{id}`
-- returns, the request's input items, and the conversation a later `previous_response_id` goes on
-- from. Kept per organization; deleting one removes it.
create table response (
    seq bigint generated always as identity,
    id text primary key,
    organization_id text not null,
    -- The response object as it was returned.
    body jsonb not null,
    -- This request's input items, each with its id, in order.
    input_items jsonb not null,
    -- Every item before this request's input (the earlier responses' inputs and outputs), so a
    -- response that goes on from this one replays them without walking the chain.
    history jsonb not null,
    created_at timestamptz not null default now(),
    constraint response_seq_key unique (seq)
);
create index response_organization_idx on response (organization_id, seq);
