-- Batches (`/v1/batches`): a file of requests answered at low priority, each line's answer kept as
-- it is made so a batch resumes after a crash without redoing or doubling a line.
create table batch (
    seq bigint generated always as identity,
    id text primary key,
    organization_id text not null,
    endpoint text not null,
    input_file_id text not null,
    completion_window text not null,
    status text not null default 'validating'
        constraint batch_status_check check (status in ('validating', 'failed', 'in_progress',
            'finalizing', 'completed', 'expired', 'cancelling', 'cancelled')),
    output_file_id text,
    error_file_id text,
    -- Set when the batch failed as a whole: `{object: "list", data: [{code, message, line, param}]}`.
    errors jsonb,
    total integer not null default 0,
    completed integer not null default 0,
    failed integer not null default 0,
    metadata jsonb,
    -- The runner holding it, until when.
    locked_by text,
    locked_until timestamptz,
    created_at timestamptz not null default now(),
    in_progress_at timestamptz,
    expires_at timestamptz not null,
    finalizing_at timestamptz,
    completed_at timestamptz,
    failed_at timestamptz,
    expired_at timestamptz,
    cancelling_at timestamptz,
    cancelled_at timestamptz,
    constraint batch_seq_key unique (seq)
);
create index batch_organization_idx on batch (organization_id, seq);
create index batch_runnable_idx on batch (seq) where status in ('validating', 'in_progress', 'finalizing', 'cancelling');

-- One answered line of a batch: its output-file line, and whether it goes to the error file.
create table batch_line (
    batch_id text not null references batch (id) on delete cascade,
    line integer not null,
    result jsonb not null,
    is_error boolean not null,
    primary key (batch_id, line)
);
