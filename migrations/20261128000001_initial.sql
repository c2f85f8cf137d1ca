-- Files uploaded through /v1/files and produced by jobs (purpose fine-tune-results).
create table file (
    seq bigint generated always as identity,
    id text primary key,
    organization_id text not null,
    bytes bigint not null constraint file_bytes_check check (bytes >= 0),
    filename text not null,
    purpose text not null,
    status text not null default 'processed'
        constraint file_status_check check (status in ('uploaded', 'processed', 'error')),
    status_details text,
    dataset_format text,
    example_count integer,
    created_at timestamptz not null default now(),
    expires_at timestamptz,
    constraint file_seq_key unique (seq)
);
-- Listing is always per organization, newest (or oldest) first, paged by an `after` cursor.
create index file_organization_seq_idx on file (organization_id, seq);
create index file_expires_at_idx on file (expires_at) where expires_at is not null;

-- Fine-tuning jobs: the API's object and the queue's row at once.
create table fine_tuning_job (
    seq bigint generated always as identity,
    id text primary key,
    organization_id text not null,
    model text not null,
    training_file text not null,
    validation_file text,
    suffix text,
    seed bigint not null,
    status text not null
        constraint fine_tuning_job_status_check check (status in
            ('validating_files', 'queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled')),
    hyperparameters jsonb not null,
    method jsonb not null,
    metadata jsonb,
    integrations jsonb,
    error jsonb,
    fine_tuned_model text constraint fine_tuning_job_fine_tuned_model_key unique,
    result_files text[] not null default '{}',
    trained_tokens bigint,
    estimated_finish timestamptz,
    finished_at timestamptz,
    -- Queue: `attempt` is the fencing token (bumped on every claim), `lost_leases` counts claims
    -- of a job whose previous lease had expired (a worker died), `locked_until` is the lease.
    attempt integer not null default 0,
    lost_leases integer not null default 0,
    locked_by text,
    locked_until timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint fine_tuning_job_seq_key unique (seq)
);
create index fine_tuning_job_organization_seq_idx on fine_tuning_job (organization_id, seq);
create index fine_tuning_job_metadata_idx on fine_tuning_job using gin (metadata jsonb_path_ops);
-- The claim query scans only runnable jobs, oldest first.
create index fine_tuning_job_runnable_idx on fine_tuning_job (seq)
    where status in ('validating_files', 'queued', 'running');

create table fine_tuning_job_event (
    seq bigint generated always as identity,
    id text primary key,
    job_id text not null
        constraint fine_tuning_job_event_job_id_fkey references fine_tuning_job (id) on delete cascade,
    created_at timestamptz not null default now(),
    level text not null constraint fine_tuning_job_event_level_check check (level in ('info', 'warn', 'error')),
    message text not null,
    type text not null constraint fine_tuning_job_event_type_check check (type in ('message', 'metrics')),
    data jsonb,
    constraint fine_tuning_job_event_seq_key unique (seq)
);
create index fine_tuning_job_event_job_seq_idx on fine_tuning_job_event (job_id, seq);

create table fine_tuning_job_checkpoint (
    seq bigint generated always as identity,
    id text primary key,
    job_id text not null
        constraint fine_tuning_job_checkpoint_job_id_fkey references fine_tuning_job (id) on delete cascade,
    created_at timestamptz not null default now(),
    fine_tuned_model_checkpoint text not null
        constraint fine_tuning_job_checkpoint_model_key unique,
    step_number integer not null constraint fine_tuning_job_checkpoint_step_check check (step_number >= 0),
    metrics jsonb not null default '{}',
    path text not null,
    constraint fine_tuning_job_checkpoint_seq_key unique (seq),
    constraint fine_tuning_job_checkpoint_job_step_key unique (job_id, step_number)
);
create index fine_tuning_job_checkpoint_job_seq_idx on fine_tuning_job_checkpoint (job_id, seq);

-- Servable models beyond the base model: fine-tuned results and runtime-loaded adapters.
create table model (
    id text primary key,
    organization_id text,
    kind text not null constraint model_kind_check check (kind in ('fine_tuned', 'adapter')),
    job_id text constraint model_job_id_fkey references fine_tuning_job (id) on delete set null,
    base_model text not null,
    path text not null,
    created_at timestamptz not null default now(),
    deleted_at timestamptz
);
create index model_organization_idx on model (organization_id, created_at) where deleted_at is null;
