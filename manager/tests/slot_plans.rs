//! Slot plans over the simulated inventories in `fixtures/inventory/`: what each spec plans,
//! every validation error (its variant and that its message says what to do), and the
//! environment a planned slot's worker gets. Specs are written as the `[slots]` TOML table.

use std::path::Path;

use htex_manager::inventory::{simulated::load_inventory, Inventory};
use htex_manager::plan::{
    mps_sm_count, parse_size, plan, PlannedSlot, SlotPlanError, SlotSpec, MAX_MPS_CLIENTS,
};
use htex_manager::slot_env::{slot_env, MemLimitKey};
use htex_protocol::SlotKind;

const GIB: u64 = 1 << 30;

fn inventory(name: &str) -> Inventory {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/inventory");
    load_inventory(&dir.join(name)).unwrap_or_else(|error| panic!("{name}: {error}"))
}

fn spec(toml_text: &str) -> SlotSpec {
    toml::from_str(toml_text).unwrap_or_else(|error| panic!("{toml_text}: {error}"))
}

fn planned(fixture: &str, toml_text: &str) -> Vec<PlannedSlot> {
    plan(&spec(toml_text), &inventory(fixture))
        .unwrap_or_else(|error| panic!("{fixture} / {toml_text}: {error}"))
}

/// The plan in short (`gpu0 mps1:50 mig0:3g.40gb cpu`), checking slot indices run 0, 1, 2, ...
fn shape(slots: &[PlannedSlot]) -> String {
    let words: Vec<String> = slots
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let d = &slot.descriptor;
            assert_eq!(d.index, i as u32, "{slots:?}");
            let gpu = d.gpu_index.map(|g| g.to_string()).unwrap_or_default();
            match d.kind {
                SlotKind::Cpu => "cpu".to_string(),
                SlotKind::Gpu => format!("gpu{gpu}"),
                SlotKind::Mps => format!("mps{gpu}:{}", d.mps_percentage.unwrap()),
                SlotKind::Mig => format!("mig{gpu}:{}", d.mig_profile.as_deref().unwrap()),
            }
        })
        .collect();
    words.join(" ")
}

fn shape_of(fixture: &str, toml_text: &str) -> String {
    shape(&planned(fixture, toml_text))
}

fn uuids(slots: &[PlannedSlot]) -> Vec<String> {
    slots
        .iter()
        .map(|s| s.descriptor.gpu_uuid.clone().unwrap())
        .collect()
}

#[test]
fn mps_slots_with_and_without_memory_limits() {
    let gpu = inventory("h100.json").gpus[0].clone();
    let slots = planned("h100.json", r#"mps = ["0:50,25,25"]"#);
    assert_eq!(shape(&slots), "mps0:50 mps0:25 mps0:25");
    assert_eq!(uuids(&slots), vec![gpu.uuid.clone(); 3]);
    let sms: Vec<_> = slots.iter().map(|s| s.descriptor.sm_count).collect();
    assert_eq!(sms, [Some(66), Some(32), Some(32)]);
    for slot in &slots {
        assert_eq!(slot.descriptor.memory_bytes, Some(gpu.memory_bytes));
        assert_eq!(slot.pinned_memory_limit, None);
    }
    // Measured on the H100: 8 SMs from 1 % to 7 %, then whole TPCs (docs/results/gpu-slots.md).
    let measured = [
        (1, 8),
        (7, 8),
        (8, 10),
        (10, 12),
        (13, 16),
        (25, 32),
        (33, 42),
        (50, 66),
        (99, 130),
        (100, 132),
    ];
    for (p, sms) in measured {
        assert_eq!(mps_sm_count(132, p), sms, "{p} %");
    }

    let limited = planned(
        "h100.json",
        "mps = ['0:50,25,25']\nmps_mem = ['0:20G,10G,10G']",
    );
    let limits: Vec<_> = limited.iter().map(|s| s.pinned_memory_limit).collect();
    assert_eq!(limits, [Some(20 * GIB), Some(10 * GIB), Some(10 * GIB)]);
    let memory: Vec<_> = limited.iter().map(|s| s.descriptor.memory_bytes).collect();
    assert_eq!(memory, limits);
}

#[test]
fn whole_and_split_gpus() {
    let two = inventory("two-gpus.json");
    let (uuid0, uuid1) = (two.gpus[0].uuid.clone(), two.gpus[1].uuid.clone());
    let split = planned("two-gpus.json", "mps_split = 4");
    assert_eq!(
        shape(&split),
        "mps0:25 mps0:25 mps0:25 mps0:25 mps1:25 mps1:25 mps1:25 mps1:25"
    );
    let mut expected = vec![uuid0.clone(); 4];
    expected.extend(vec![uuid1.clone(); 4]);
    assert_eq!(uuids(&split), expected);

    let all = planned("two-gpus.json", "gpus = 'all'");
    assert_eq!(shape(&all), "gpu0 gpu1");
    assert_eq!(uuids(&all), [uuid0.clone(), uuid1.clone()]);
    for (slot, gpu) in all.iter().zip(&two.gpus) {
        let d = &slot.descriptor;
        assert_eq!(
            (d.sm_count, d.memory_bytes),
            (Some(132), Some(gpu.memory_bytes))
        );
        assert_eq!((d.mps_percentage, slot.pinned_memory_limit), (None, None));
    }
    let shared = planned("two-gpus.json", "gpus = '0,0'");
    assert_eq!(shape(&shared), "gpu0 gpu0");
    assert_eq!(uuids(&shared), [uuid0.clone(), uuid0]);
    assert_eq!(
        shape_of("two-gpus.json", &format!("gpus = '{uuid1}'")),
        "gpu1"
    );

    let cases = [
        ("gpus = 'all'\nmps = ['1:50,50']", "gpu0 mps1:50 mps1:50"),
        ("gpus = '0'\nmps_split = 2", "gpu0 mps1:50 mps1:50"),
        ("mps = ['1:70']\nmps_split = 2", "mps0:50 mps0:50 mps1:70"),
        ("gpus = 'all'\ncpu = 2", "gpu0 gpu1 cpu cpu"),
        ("mps = ['0:50']\ncpu = 1", "mps0:50 cpu"),
    ];
    for (toml_text, want) in cases {
        assert_eq!(shape_of("two-gpus.json", toml_text), want, "{toml_text}");
    }
    assert_eq!(shape_of("h100.json", "cpu = 2"), "cpu cpu");
    // A pending (not yet current) MIG mode leaves the GPU whole.
    assert_eq!(shape_of("mig-pending.json", "gpus = '0'"), "gpu0");
}

#[test]
fn mig_instances() {
    let instances = inventory("h100-mig.json").gpus[0].mig_instances.clone();
    let mig: Vec<String> = instances.iter().map(|m| m.uuid.clone()).collect();
    let slots = planned("h100-mig.json", "mig = 'auto'");
    assert_eq!(
        shape(&slots),
        "mig0:3g.40gb mig0:2g.20gb mig0:1g.10gb mig0:1g.10gb"
    );
    assert_eq!(uuids(&slots), mig);
    for (slot, instance) in slots.iter().zip(&instances) {
        let d = &slot.descriptor;
        assert_eq!(
            (d.sm_count, d.memory_bytes),
            (Some(instance.sm_count), Some(instance.memory_bytes))
        );
    }
    assert_eq!(slots[0].descriptor.sm_count, Some(60));

    assert_eq!(shape_of("h100-mig.json", "gpus = 'all'"), "gpu1");
    let both = shape_of("h100-mig.json", "gpus = 'all'\nmig = 'auto'\ncpu = 1");
    assert_eq!(
        both,
        "gpu1 mig0:3g.40gb mig0:2g.20gb mig0:1g.10gb mig0:1g.10gb cpu"
    );
    let one = planned("h100-mig.json", &format!("mig = '{}'", mig[1]));
    assert_eq!(
        (shape(&one), uuids(&one)),
        ("mig0:2g.20gb".into(), vec![mig[1].clone()])
    );
    let two = planned("h100-mig.json", &format!("mig = '{}, {}'", mig[3], mig[0]));
    assert_eq!(uuids(&two), [mig[3].clone(), mig[0].clone()]);
    let parsl = planned(
        "h100-mig.json",
        &format!("available_accelerators = ['{}', '1']", mig[2]),
    );
    assert_eq!(shape(&parsl), "mig0:1g.10gb gpu1");
    assert_eq!(uuids(&parsl)[0], mig[2]);
}

#[test]
fn parsl_form() {
    let four = "available_accelerators = ['0','0','0','0']\ngpu_percentage = [25,25,25,25]";
    let mps = planned("h100.json", four);
    assert_eq!(shape(&mps), "mps0:25 mps0:25 mps0:25 mps0:25");
    assert!(mps.iter().all(|s| s.descriptor.sm_count == Some(32)));
    let whole = planned("two-gpus.json", "available_accelerators = ['0', '1']");
    assert_eq!(shape(&whole), "gpu0 gpu1");
    let with_cpu = planned("two-gpus.json", "available_accelerators = ['1']\ncpu = 1");
    assert_eq!(shape(&with_cpu), "gpu1 cpu");
}

#[test]
fn oversubscribe_and_the_client_limit_accept() {
    let over = "mps = ['0:60,50']\noversubscribe = true";
    assert_eq!(shape(&planned("h100.json", over)), "mps0:60 mps0:50");
    let mem = planned(
        "h100.json",
        "mps = ['0:50,50']\nmps_mem = ['0:40G,40G']\noversubscribe = true",
    );
    assert_eq!(mem[1].pinned_memory_limit, Some(40 * GIB));
    let parsl =
        "available_accelerators = ['0','0']\ngpu_percentage = [60,60]\noversubscribe = true";
    assert_eq!(shape(&planned("h100.json", parsl)), "mps0:60 mps0:60");
    // 48 clients of 2 % (96 % in all) is the most one GPU takes.
    let most = vec!["2"; MAX_MPS_CLIENTS].join(",");
    assert_eq!(
        planned("h100.json", &format!("mps = ['0:{most}']")).len(),
        48
    );
    assert_eq!(planned("h100.json", "mps_split = 48").len(), 48);
}

/// (fixture, spec, start of the error's Debug form, what its message must say).
type ErrorCase<'a> = (&'a str, String, &'a str, Vec<&'a str>);

#[test]
fn every_error_names_the_fix() {
    let two = inventory("two-gpus.json");
    let (uuid0, uuid1) = (two.gpus[0].uuid.as_str(), two.gpus[1].uuid.as_str());
    let mig_gpu = inventory("h100-mig.json").gpus.remove(0);
    let (mig0, mig3) = (
        mig_gpu.mig_instances[0].uuid.as_str(),
        mig_gpu.mig_instances[3].uuid.as_str(),
    );
    let h100 = inventory("h100.json").gpus.remove(0).uuid;
    let too_many = vec!["2"; MAX_MPS_CLIENTS + 1].join(",");
    let (bad_gpu, bad_mig) = (
        "GPU-00000000-0000-0000-0000-000000000000",
        "MIG-00000000-0000-0000-0000-000000000000",
    );
    let huge = "16000000000G";
    #[rustfmt::skip]
    let cases: Vec<ErrorCase> = vec![
        ("h100.json", "mps = ['0:60,50']".into(), "PercentageSum { gpu: 0, sum: 110 }", vec!["110", "at most 100", "--oversubscribe"]),
        ("h100.json", "available_accelerators = ['0','0']\ngpu_percentage = [60,60]".into(), "PercentageSum { gpu: 0, sum: 120 }", vec!["--oversubscribe"]),
        ("h100.json", format!("mps = ['0:{too_many}']"), "TooManyClients { gpu: 0, count: 49 }", vec!["49 MPS slots", "at most 48"]),
        ("h100.json", "mps_split = 49".into(), "TooManyClients { gpu: 0, count: 49 }", vec!["at most 48"]),
        ("h100.json", "mps_split = 4294967295".into(), "TooManyClients { gpu: 0, count: 4294967295 }", vec!["at most 48"]),
        ("h100.json", "gpus = '0'\nmps = ['0:50']".into(), "WholeAndMps { gpu: 0 }", vec!["either whole or shared by MPS"]),
        ("two-gpus.json", "gpus = '5'".into(), "UnknownGpu { given: \"5\"", vec!["`5`", "this node has", uuid0, uuid1]),
        ("two-gpus.json", "mps = ['5:50']".into(), "UnknownGpu { given: \"5\"", vec![uuid0, uuid1]),
        ("two-gpus.json", format!("gpus = '{bad_gpu}'"), "UnknownGpu { given: \"GPU-0000", vec![bad_gpu, "this node has", uuid0, uuid1]),
        ("two-gpus.json", "available_accelerators = ['7']".into(), "UnknownGpu { given: \"7\"", vec![uuid0, uuid1]),
        ("h100-mig.json", format!("mig = '{bad_mig}'"), "UnknownMig { given: \"MIG-0000", vec![bad_mig, "this node has", mig0, mig3, "3g.40gb"]),
        ("h100.json", format!("mig = '{bad_mig}'"), "UnknownMig", vec!["no MIG instances"]),
        ("h100.json", "mps = ['0:0']".into(), "PercentageRange { gpu: 0, value: 0 }", vec!["use 1 to 100"]),
        ("h100.json", "mps = ['0:50,101']".into(), "PercentageRange { gpu: 0, value: 101 }", vec!["use 1 to 100"]),
        ("h100.json", "available_accelerators = ['0']\ngpu_percentage = [0]".into(), "PercentageRange { gpu: 0, value: 0 }", vec!["use 1 to 100"]),
        ("h100.json", "mps = ['0']".into(), "Syntax { flag: \"--mps\", given: \"0\"", vec!["such as 0:50,25,25"]),
        ("h100.json", "mps = ['0:']".into(), "Syntax { flag: \"--mps\", given: \"0:\"", vec!["such as 0:50,25,25"]),
        ("h100.json", "mps = [':50']".into(), "Syntax { flag: \"--mps\"", vec!["such as 0:50,25,25"]),
        ("h100.json", "mps = ['0:abc']".into(), "Syntax { flag: \"--mps\", given: \"0:abc\"", vec!["whole numbers from 1 to 100"]),
        ("h100.json", "mps = ['0:50', '0:25']".into(), "MpsTwice { gpu: 0, first: \"0:50\", second: \"0:25\" }", vec!["give each GPU one --mps entry"]),
        ("h100.json", format!("mps = ['0:50', '{h100}:25']"), "MpsTwice { gpu: 0", vec!["one --mps entry"]),
        ("h100.json", "mps = ['0:50,50']\nmps_mem = ['0:20G']".into(), "MemCount { gpu: 0, limits: 1, slots: 2 }", vec!["give one limit per slot"]),
        ("h100.json", "mps = ['0:50,50']\nmps_mem = ['0:40G,40G']".into(), "MemSum { gpu: 0", vec!["80.0 GiB", "79.6 GiB", "lower them or pass --oversubscribe"]),
        ("h100.json", format!("mps = ['0:50,50']\nmps_mem = ['0:{huge},{huge}']"), "MemSum { gpu: 0", vec!["--oversubscribe"]),
        ("h100.json", "mps = ['0:50']\nmps_mem = ['0:20X']".into(), "Syntax { flag: \"--mps-mem\"", vec!["20G, 512M or 1024K"]),
        ("h100.json", "mps_mem = ['0:20G']".into(), "Conflict(", vec!["no MPS slots", "add --mps 0:"]),
        ("two-gpus.json", "gpus = 'all'\nmps = ['1:50']\nmps_mem = ['0:20G']".into(), "Conflict(", vec!["add --mps 0:"]),
        ("h100.json", "available_accelerators = ['0']\ngpus = '0'".into(), "Conflict(", vec!["not both"]),
        ("h100.json", "available_accelerators = ['0']\nmps_split = 2".into(), "Conflict(", vec!["not both"]),
        ("h100.json", "available_accelerators = ['0']\ngpu_percentage = [50]\nmps_mem = ['0:20G']".into(), "Conflict(", vec!["--mps-mem", "not both"]),
        ("h100-mig.json", format!("available_accelerators = ['1']\nmig = '{mig0}'"), "Conflict(", vec!["not both"]),
        ("h100.json", "available_accelerators = ['0','0']\ngpu_percentage = [50]".into(), "Conflict(", vec!["one percentage per accelerator"]),
        ("h100.json", "gpu_percentage = [50]".into(), "Conflict(", vec!["one percentage per accelerator"]),
        ("h100.json", String::new(), "Empty", vec!["give --workers N", "--gpus"]),
        ("h100.json", "mps_split = 0".into(), "Syntax { flag: \"--mps-split\"", vec!["at least 1"]),
        ("mig-no-instances.json", "mig = 'auto'".into(), "Empty", vec!["--workers N"]),
        ("mig-no-instances.json", "gpus = '0'".into(), "MigGpu { gpu: 0 }", vec!["--mig auto"]),
        ("mig-no-instances.json", "mps = ['0:50']".into(), "MigGpu { gpu: 0 }", vec!["MIG instances"]),
        ("h100-mig.json", "gpus = '0,1'".into(), "MigGpu { gpu: 0 }", vec!["--mig auto"]),
    ];
    for (fixture, toml_text, variant, says) in &cases {
        let at = format!("{fixture} / {toml_text}");
        let error = plan(&spec(toml_text), &inventory(fixture)).expect_err(&at);
        let debug = format!("{error:?}");
        assert!(debug.starts_with(variant), "{at}: {debug}");
        let message = error.to_string();
        for part in says {
            assert!(message.contains(part), "{at}: `{message}` lacks `{part}`");
        }
    }
}

#[test]
fn sizes() {
    #[rustfmt::skip]
    let ok = [("20G", 20 * GIB), ("20g", 20 * GIB), ("512M", 512 << 20), ("1024K", 1 << 20), ("123", 123), (" 4G ", 4 * GIB)];
    for (text, bytes) in ok {
        assert_eq!(parse_size("--mps-mem", text), Ok(bytes), "{text}");
    }
    #[rustfmt::skip]
    let bad = [("0G", "above zero"), ("0", "above zero"), ("12X", "20G, 512M or 1024K"), ("", "20G"), ("G", "20G"), ("-1G", "20G"), ("17179869184G", "too large")];
    for (text, says) in bad {
        let error = parse_size("--mps-mem", text).expect_err(text);
        let SlotPlanError::Syntax { flag, .. } = &error else {
            panic!("{text}: {error:?}")
        };
        assert_eq!(*flag, "--mps-mem");
        assert!(error.to_string().contains(says), "{text}: {error}");
    }
}

/// Checks each variable: set once to the value, or (`None`) not set.
fn expect_env(env: &[(String, String)], want: &[(&str, Option<&str>)]) {
    for &(key, value) in want {
        let found: Vec<_> = env.iter().filter(|(k, _)| k == key).collect();
        assert!(found.len() <= 1, "{key} is set twice: {env:?}");
        assert_eq!(found.first().map(|(_, v)| v.as_str()), value, "{key}");
    }
}

#[test]
fn slot_env_per_kind() {
    let (mps_pipe, empty) = (Path::new("/tmp/htex-mps/0"), Path::new("/tmp/htex-empty"));
    let uuid = inventory("h100.json").gpus.remove(0).uuid;
    let mps = planned(
        "h100.json",
        "mps = ['0:50,25,10']\nmps_mem = ['0:20G,10G,10G']",
    );
    let by_uuid = format!("{uuid}=20480M");
    for (key, limit) in [
        (MemLimitKey::Ordinal, "0=20480M"),
        (MemLimitKey::Uuid, &by_uuid),
    ] {
        let env = slot_env(&mps[0], Some(mps_pipe), Some(empty), key);
        #[rustfmt::skip]
        expect_env(&env, &[
            ("CUDA_VISIBLE_DEVICES", Some(&uuid)),
            ("CUDA_MPS_PIPE_DIRECTORY", Some("/tmp/htex-mps/0")),
            ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", Some("50")),
            ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", Some(limit)),
            ("HTEX_SLOT_INDEX", Some("0")),
            ("HTEX_SLOT_KIND", Some("mps")),
            ("HTEX_SLOT_GPU_UUID", Some(&uuid)),
            ("HTEX_SLOT_GPU_INDEX", Some("0")),
            ("HTEX_SLOT_MPS_PERCENTAGE", Some("50")),
            ("HTEX_SLOT_MEMORY_BYTES", Some("21474836480")),
            ("HTEX_SLOT_SM_COUNT", Some("66")),
            ("HTEX_SLOT_MIG_PROFILE", None),
        ]);
    }
    let env = slot_env(&mps[2], Some(mps_pipe), None, MemLimitKey::Ordinal);
    #[rustfmt::skip]
    expect_env(&env, &[
        ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", Some("0=10240M")),
        ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", Some("10")),
        ("HTEX_SLOT_INDEX", Some("2")),
    ]);
    let unlimited = planned("h100.json", "mps = ['0:50']");
    let env = slot_env(&unlimited[0], Some(mps_pipe), None, MemLimitKey::Ordinal);
    expect_env(&env, &[("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", None)]);

    let whole = planned("h100.json", "gpus = '0'\ncpu = 1");
    let env = slot_env(&whole[0], None, Some(empty), MemLimitKey::Ordinal);
    #[rustfmt::skip]
    expect_env(&env, &[
        ("CUDA_VISIBLE_DEVICES", Some(&uuid)),
        ("CUDA_MPS_PIPE_DIRECTORY", Some("/tmp/htex-empty")),
        ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", None),
        ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", None),
        ("HTEX_SLOT_KIND", Some("gpu")),
        ("HTEX_SLOT_MPS_PERCENTAGE", None),
        ("HTEX_SLOT_SM_COUNT", Some("132")),
    ]);

    let env = slot_env(&whole[1], Some(mps_pipe), Some(empty), MemLimitKey::Uuid);
    #[rustfmt::skip]
    expect_env(&env, &[
        ("CUDA_VISIBLE_DEVICES", Some("")),
        ("HTEX_SLOT_KIND", Some("cpu")),
        ("HTEX_SLOT_INDEX", Some("1")),
        ("HTEX_SLOT_GPU_UUID", None),
        ("HTEX_SLOT_MEMORY_BYTES", None),
    ]);
    assert!(
        env.iter().all(|(k, _)| !k.starts_with("CUDA_MPS_")),
        "{env:?}"
    );

    let mig = inventory("h100-mig.json")
        .gpus
        .remove(0)
        .mig_instances
        .remove(0);
    let slots = planned("h100-mig.json", "mig = 'auto'");
    let env = slot_env(&slots[0], None, Some(empty), MemLimitKey::Ordinal);
    #[rustfmt::skip]
    expect_env(&env, &[
        ("CUDA_VISIBLE_DEVICES", Some(&mig.uuid)),
        ("CUDA_MPS_PIPE_DIRECTORY", Some("/tmp/htex-empty")),
        ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", None),
        ("HTEX_SLOT_KIND", Some("mig")),
        ("HTEX_SLOT_MIG_PROFILE", Some("3g.40gb")),
        ("HTEX_SLOT_GPU_UUID", Some(&mig.uuid)),
        ("HTEX_SLOT_SM_COUNT", Some("60")),
    ]);
}
