-- A step's metrics are recorded once: a job resumed from a checkpoint after a lost worker re-runs
-- the steps after that checkpoint, and their metrics must not be listed twice. Earlier duplicates
-- (the oldest of each step stays) are removed first.
delete from fine_tuning_job_event e
using fine_tuning_job_event older
where e.type = 'metrics' and older.type = 'metrics'
  and e.job_id = older.job_id
  and (e.data->>'step') = (older.data->>'step')
  and e.seq > older.seq;

create unique index fine_tuning_job_event_metrics_step_key
    on fine_tuning_job_event (job_id, ((data->>'step')::bigint))
    where type = 'metrics';
