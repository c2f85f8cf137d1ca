-- Ensembles: several models of one base answering as one model name (voting strategies), or a
-- domain model with a fallback (layered inference). Names share the namespace of `model.id`.
create table ensemble (
    seq bigint generated always as identity,
    id text primary key,
    organization_id text not null,
    strategy text not null
        constraint ensemble_strategy_check check (strategy in ('vote', 'best_logprob', 'consensus', 'layered')),
    members text[] not null constraint ensemble_members_check check (cardinality(members) between 1 and 8),
    fallback text,
    threshold double precision,
    -- Set when a job with `ensemble_size` > 1 trained the members.
    job_id text constraint ensemble_job_id_fkey references fine_tuning_job (id) on delete set null,
    created_at timestamptz not null default now(),
    constraint ensemble_seq_key unique (seq),
    constraint ensemble_layered_check check ((strategy = 'layered') = (fallback is not null and threshold is not null))
);
create index ensemble_organization_idx on ensemble (organization_id, seq);
