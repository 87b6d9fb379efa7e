//! The training run: data prepared once (crops through faceflow's detector), then the epoch
//! loop — batches, losses, optimizer steps, checkpoints, validation.

use super::*;

/// Training items, validation items, and the images where no face was found.
pub(super) struct Prepared {
    pub(super) train: Vec<Item>,
    pub(super) val: Vec<Item>,
    pub(super) no_face: Vec<String>,
}

/// Reads the sources, splits, and fills the crop cache; `None` when `opts.stop` was set before the
/// cache was complete (the crops made so far are kept for the next run).
pub(super) fn prepare(
    config: &TrainConfig,
    opts: &RunOptions,
) -> Result<Option<Prepared>, TrainError> {
    let sources: Vec<Source> = config
        .sources
        .iter()
        .map(|(dir, tasks)| Source {
            dir: dir.clone(),
            tasks: tasks.clone(),
        })
        .collect();
    let report = dataset::scan(&sources)?;
    say(&format!(
        "{} images: {} malformed names skipped, {} duplicate copies removed, {} dropped for conflicting labels, {} unreadable",
        report.samples.len(),
        report.malformed.len(),
        report.duplicates,
        report.conflicting,
        report.unreadable.len()
    ));
    for (name, reason) in report.malformed.iter().take(10) {
        say(&format!("  skipped {name}: {reason}"));
    }
    let mut samples = report.samples;
    if let Some(n) = config.max_images {
        // A deterministic subset: order by a seeded hash of the content.
        samples.sort_by_key(|s| dataset::is_validation_key(s, config.seed ^ 0x5eed));
        samples.truncate(n);
    }
    let (mut val, mut train): (Vec<Sample>, Vec<Sample>) = samples
        .into_iter()
        .partition(|s| dataset::is_validation(s, config.seed, config.val_fraction));
    if config.simulate_multi_source {
        for s in &mut train {
            let half = dataset::is_validation(s, config.seed ^ 0x4d53, 0.5);
            s.set_tasks(if half {
                &[Task::Age, Task::Gender]
            } else {
                &[Task::Race]
            });
        }
    }
    for s in &mut val {
        s.set_tasks(&Task::ALL);
    }
    let mut cache = CropCache::open(
        &opts.cache_dir,
        &opts.detect,
        &crate::model::spec::model_align(config.input_px, config.margin),
    )?;
    let all: Vec<Sample> = train.iter().chain(val.iter()).cloned().collect();
    let before = cache.len();
    let started = Instant::now();
    let bar = progress_bar(opts.progress, all.len() as u64, "images");
    bar.set_prefix("detecting and aligning faces ");
    // `fill` counts the images not cached yet.
    cache.fill(
        &all,
        &opts.detect,
        opts.workers,
        &opts.stop,
        &|done, total| {
            bar.set_length(total as u64);
            crate::console::show_rate(&bar, done as u64, started);
            // Without a terminal (a log file) the bar is hidden: a line now and then instead.
            if !opts.progress && (done % 2000 == 0 || done == total) {
                say(&format!(
                    "detecting and aligning faces: {done}/{total} images, {:.0}/s",
                    done as f64 / started.elapsed().as_secs_f64().max(1e-3)
                ));
            }
        },
    )?;
    bar.finish_and_clear();
    if cache.len() > before {
        say(&format!(
            "cached {} new crops in {:.0} s ({})",
            cache.len() - before,
            started.elapsed().as_secs_f64(),
            cache.path().display()
        ));
    }
    if opts.stop.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let mut no_face = Vec::new();
    let mut items = |samples: &[Sample], with_masks: bool| -> Vec<Item> {
        let mut out = Vec::new();
        for s in samples {
            match cache.get(s.content_hash) {
                Some(Some(crop)) => out.push(Item {
                    crop: crop.clone(),
                    image_hash: s.content_hash,
                    truth: Truth {
                        age_years: (s.has_age || !with_masks).then_some(s.labels.age_years),
                        gender: (s.has_gender || !with_masks).then_some(s.labels.gender),
                        race: (s.has_race || !with_masks).then_some(s.labels.race),
                    },
                }),
                _ => no_face.push(s.path.display().to_string()),
            }
        }
        out
    };
    let train_items = items(&train, true);
    let val_items = items(&val, false);
    say(&format!(
        "{} training and {} validation faces; no face found in {} images",
        train_items.len(),
        val_items.len(),
        no_face.len()
    ));
    Ok(Some(Prepared {
        train: train_items,
        val: val_items,
        no_face,
    }))
}

/// The outcome of a run stopped (Ctrl-C) before its first step: its progress did not change (at
/// most its teachers' new paths were saved), so say how to go on.
fn stopped_before_training(state: RunState, resumed: bool, while_doing: &str) -> Outcome {
    say(&if resumed {
        format!(
            "stopped {while_doing}; the run's progress is unchanged: run again with --resume to continue"
        )
    } else {
        format!("stopped {while_doing}; the run had not started: run the same command again")
    });
    Outcome {
        state,
        onnx: None,
        stopped: true,
    }
}

/// Normalised planar centre crops of `items`, ready for a `[n, 3, H, W]` tensor.
pub(super) fn centre_batch<'a>(items: impl IntoIterator<Item = &'a Item>, out: &mut Vec<f32>) {
    let crops: Vec<Vec<u8>> = items
        .into_iter()
        .map(|it| augment::centre(&it.crop))
        .collect();
    out.clear();
    augment::normalise_batch(&crops, out);
}

/// Predictions of `model` (any device; evaluated without autodiff) on the centre crops of `items`.
pub(super) fn predict(model: &FaceAttrNet, items: &[Item], batch: usize) -> Vec<Prediction> {
    let device = Device::flex();
    let mut out = Vec::with_capacity(items.len());
    let mut input = Vec::new();
    for chunk in items.chunks(batch.max(1)) {
        centre_batch(chunk, &mut input);
        let side = side_of(&input, chunk.len());
        let x = Tensor::<4>::from_data(
            TensorData::new(std::mem::take(&mut input), [chunk.len(), 3, side, side]),
            &device,
        );
        let (a, g, r) = model.forward(x);
        let read = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap_or_default();
        let (a, g, r) = (read(a), read(g), read(r));
        for i in 0..chunk.len() {
            out.push(Prediction::from_logits(
                &a[i * FINE_AGE_BINS..(i + 1) * FINE_AGE_BINS],
                &g[i * 2..(i + 1) * 2],
                &r[i * 5..(i + 1) * 5],
            ));
        }
    }
    out
}

/// Scores the network on `items` for the `tasks` it trains (an untrained head is not scored).
pub(super) fn validate(model: &FaceAttrNet, items: &[Item], tasks: &[Task]) -> Tally {
    let predictions = predict(model, items, 128);
    let mut tally = Tally::default();
    for (item, p) in items.iter().zip(&predictions) {
        tally.add(&item.truth.only(tasks), Some(p));
    }
    tally
}

/// On resume, checks the run's teachers are the files it started with, before hours of work.
/// Teacher files that moved (another machine, another checkout) are found where `--teacher`
/// says, when the given files have the recorded contents in the recorded order. The blend
/// weight stays the run's own. Returns whether the teachers were read from new paths, which
/// the caller saves at once.
fn check_resumed_teachers(
    saved: &mut TrainConfig,
    given: &TrainConfig,
) -> Result<bool, TrainError> {
    if saved.distill <= 0.0 {
        if !given.teachers.is_empty() {
            say("this run does not distil (--teacher and --distill are ignored on resume)");
        }
        return Ok(false);
    }
    let mut moved = false;
    if !given.teachers.is_empty() && given.teachers != saved.teachers {
        if distill::teacher_hashes(&given.teachers)? != saved.teacher_hashes {
            return Err(TrainError::Config(
                "the --teacher files are not the ones this run started with (other contents, number or order); resume without --teacher to use the run's own".into(),
            ));
        }
        say(
            "teachers read from the --teacher paths (the files this run started with), now saved as the run's teachers",
        );
        saved.teachers = given.teachers.clone();
        moved = true;
    } else {
        let hashes = distill::teacher_hashes(&saved.teachers).map_err(|e| {
            if given.teachers.is_empty() {
                TrainError::Config(format!(
                    "{e}; if the teacher files moved, pass --teacher with them, in the run's order"
                ))
            } else {
                e
            }
        })?;
        if hashes != saved.teacher_hashes {
            return Err(TrainError::Config(
                "a teacher model changed since this run started (its file has other contents); the run cannot go on with another teacher".into(),
            ));
        }
    }
    if !given.teachers.is_empty() && given.distill != saved.distill {
        say(&format!(
            "this run blends its teachers at weight {} (--distill, or its default, is ignored on resume)",
            saved.distill
        ));
    }
    Ok(moved)
}

/// Trains (or resumes) a run. Returns the final state and where the ONNX model went.
pub fn train(config: TrainConfig, opts: &RunOptions) -> Result<Outcome, TrainError> {
    fs::create_dir_all(&opts.out_dir).map_err(|e| TrainError::Data {
        path: opts.out_dir.clone(),
        reason: e.to_string(),
    })?;
    let state_path = opts.out_dir.join(STATE_FILE);
    let resumed = opts.resume && state_path.exists();
    let mut state = if resumed {
        let mut saved = load_state(&opts.out_dir)?;
        // First, so that a refusal comes before any note of what the run keeps.
        if check_resumed_teachers(&mut saved.config, &config)? {
            // At once, not at the next checkpoint: a run stopped before one would otherwise
            // need --teacher again.
            save_state(&opts.out_dir, &saved)?;
        }
        if saved.config.epochs != config.epochs {
            say(&format!(
                "epochs changed from {} to {}: the learning-rate schedule follows the new total",
                saved.config.epochs, config.epochs
            ));
            saved.config.epochs = config.epochs;
        }
        // The flags' defaults cannot be told from flags given: say what the run keeps.
        if saved.config.input_px != config.input_px {
            say(&format!(
                "this run's input is {} px, saved with it (--input-px is ignored on resume)",
                saved.config.input_px
            ));
        }
        if saved.config.margin != config.margin {
            say(&format!(
                "this run aligns faces with margin {}, saved with it (--margin is ignored on resume)",
                saved.config.margin
            ));
        }
        if saved.config.net != config.net {
            say("this run keeps the network it was started with (--net is ignored on resume)");
        }
        if config.video_augment && !saved.config.video_augment {
            say("this run was started without --video-augment; it is ignored on resume");
        }
        saved
    } else {
        if state_path.exists() {
            return Err(TrainError::Config(format!(
                "{} already holds a run: pass --resume to continue it, or choose another --out",
                opts.out_dir.display()
            )));
        }
        config.validate()?;
        let teacher_splits = if config.distill > 0.0 {
            distill::check_teachers(
                &config.teachers,
                config.input_px,
                config.margin,
                (config.seed, config.val_fraction),
            )?
        } else {
            Vec::new()
        };
        let config = TrainConfig {
            teacher_hashes: distill::teacher_hashes(&config.teachers)?,
            teacher_splits,
            ..config
        };
        RunState::new(config)
    };
    let config = state.config.clone();
    let Some(Prepared {
        train: train_items,
        val: val_items,
        no_face,
    }) = prepare(&config, opts)?
    else {
        return Ok(stopped_before_training(
            state,
            resumed,
            "while detecting and aligning faces (the crops cached so far are kept)",
        ));
    };
    if train_items.len() < config.batch {
        return Err(TrainError::Config(format!(
            "only {} training faces, fewer than one batch of {}",
            train_items.len(),
            config.batch
        )));
    }
    let _ = fs::write(opts.out_dir.join("no_face.txt"), no_face.join("\n") + "\n");
    state.train_images = train_items.len();
    state.val_images = val_items.len();

    let device = Device::flex().autodiff();
    device.seed(config.seed);
    let mut model = FaceAttrNet::new(&device, &config.net);
    let mut optim: ModuleOptimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .init();
    if resumed {
        let path = opts.out_dir.join(MODEL_FILE);
        let record =
            ModuleRecord::load(&path).map_err(|e| checkpoint_error(&path)(e.to_string()))?;
        model = model
            .try_load_record(record)
            .map_err(|e| checkpoint_error(&path)(e.to_string()))?;
        let path = opts.out_dir.join(OPTIM_FILE);
        optim = optim
            .load(&path)
            .map_err(|e| checkpoint_error(&path)(e.to_string()))?;
        say(&format!(
            "resumed {} at epoch {}, batch {} (step {})",
            opts.out_dir.display(),
            state.epoch + 1,
            state.batch_in_epoch,
            state.step
        ));
    }

    let weights = balance(&train_items, config.balance_classes);
    // Knowledge distillation: the teachers' predictions, PER_FACE values per training face.
    let (teacher, taught_heads) = if config.distill > 0.0 {
        let Some(targets) = distill::saved_or_computed_targets(
            &opts.out_dir,
            &config.teachers,
            &config.teacher_hashes,
            &train_items,
            config.input_px,
            config.margin,
            &opts.stop,
        )?
        else {
            return Ok(stopped_before_training(
                state,
                resumed,
                "while the teachers read the training faces",
            ));
        };
        (targets.values, targets.heads)
    } else {
        (Vec::new(), [false; 3])
    };
    let batches_per_epoch = train_items.len() / config.batch;
    let side = config.input_px as usize;
    let augment_params = if config.augment {
        augment::Augment {
            video: config.video_augment,
            ..augment::Augment::default()
        }
    } else {
        augment::Augment::NONE
    };
    if opts.stop.load(Ordering::Relaxed) {
        return Ok(stopped_before_training(
            state,
            resumed,
            "before the first step",
        ));
    }
    let mut stopped = false;
    while state.epoch < config.epochs && !stopped {
        let epoch = state.epoch;
        let mut order: Vec<usize> = (0..train_items.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            config
                .seed
                .wrapping_mul(1000)
                .wrapping_add(u64::from(epoch)),
        ));
        let epoch_start = Instant::now();
        let (mut loss_sum, mut loss_n) = (0f64, 0usize);
        let mut input = Vec::new();
        let start_batch = state.batch_in_epoch;
        let bar = progress_bar(opts.progress, batches_per_epoch as u64, "batches");
        bar.set_position(start_batch as u64);
        for b in start_batch..batches_per_epoch {
            if opts.stop.load(Ordering::Relaxed) {
                stopped = true;
                break;
            }
            let step_start = Instant::now();
            let idx = &order[b * config.batch..(b + 1) * config.batch];
            // Augmentation draws from a per-step seed, so a resumed run sees the same pictures.
            let mut rng = StdRng::seed_from_u64(config.seed ^ state.step.wrapping_mul(0x9e37));
            let crops: Vec<Vec<u8>> = idx
                .iter()
                .map(|&i| augment::augment(&train_items[i].crop, &augment_params, &mut rng))
                .collect();
            input.clear();
            augment::normalise_batch(&crops, &mut input);
            let n = idx.len();
            let (mut age_t, mut gender_t, mut race_t) = (
                vec![0f32; n * FINE_AGE_BINS],
                vec![0f32; n * 2],
                vec![0f32; n * 5],
            );
            let (mut age_w, mut gender_w, mut race_w) =
                (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            let (mut age_n, mut gender_n, mut race_n) = (0usize, 0usize, 0usize);
            for (j, &i) in idx.iter().enumerate() {
                let t = &train_items[i].truth;
                // The teachers' view of this face, blended into each target it has a label for.
                let taught = teacher.get(i * distill::PER_FACE..(i + 1) * distill::PER_FACE);
                let head = |on: bool, range: std::ops::Range<usize>| match taught {
                    Some(v) if on => &v[range],
                    _ => &[][..],
                };
                let (teach_age, teach_gender, teach_race) = (
                    head(taught_heads[0], 0..FINE_AGE_BINS),
                    head(taught_heads[1], FINE_AGE_BINS..FINE_AGE_BINS + 2),
                    head(taught_heads[2], FINE_AGE_BINS + 2..distill::PER_FACE),
                );
                if let (Some(a), true) = (t.age_years, config.trains(Task::Age)) {
                    let target = &mut age_t[j * FINE_AGE_BINS..(j + 1) * FINE_AGE_BINS];
                    age_distribution(a, target);
                    distill::blend(target, teach_age, config.distill);
                    age_w[j] = weights.age[AgeGrouping::Ten.group_of(a)];
                    age_n += 1;
                }
                if let (Some(g), true) = (t.gender, config.trains(Task::Gender)) {
                    let target = &mut gender_t[j * 2..j * 2 + 2];
                    one_hot_smoothed(g, 2, config.label_smoothing, target);
                    distill::blend(target, teach_gender, config.distill);
                    gender_w[j] = weights.gender[g];
                    gender_n += 1;
                }
                if let (Some(r), true) = (t.race, config.trains(Task::Race)) {
                    let target = &mut race_t[j * 5..j * 5 + 5];
                    one_hot_smoothed(r, 5, config.label_smoothing, target);
                    distill::blend(target, teach_race, config.distill);
                    race_w[j] = weights.race[r];
                    race_n += 1;
                }
            }
            let x = Tensor::<4>::from_data(
                TensorData::new(std::mem::take(&mut input), [n, 3, side, side]),
                &device,
            );
            let (age_logits, gender_logits, race_logits) = model.forward(x);
            let [wa, wg, wr] = config.loss_weights;
            let mut loss = soft_cross_entropy(
                age_logits,
                age_t,
                age_w.iter().map(|w| w * wa).collect(),
                age_n.max(1) as f32,
                &device,
            );
            loss =
                loss + soft_cross_entropy(
                    gender_logits,
                    gender_t,
                    gender_w.iter().map(|w| w * wg).collect(),
                    gender_n.max(1) as f32,
                    &device,
                ) + soft_cross_entropy(
                    race_logits,
                    race_t,
                    race_w.iter().map(|w| w * wr).collect(),
                    race_n.max(1) as f32,
                    &device,
                );
            let loss_value = loss.clone().into_scalar::<f32>();
            if !loss_value.is_finite() {
                return Err(TrainError::Config(format!(
                    "the loss became {loss_value} at step {}: lower --lr",
                    state.step
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = learning_rate(
                &config,
                f64::from(epoch) + b as f64 / batches_per_epoch as f64,
            );
            model = optim.step(lr, model, grads);
            loss_sum += f64::from(loss_value);
            loss_n += 1;
            state.step += 1;
            state.batch_in_epoch = b + 1;
            state.train_seconds += step_start.elapsed().as_secs_f64();
            // A terminal gets a bar; a log file gets a line every 50 steps.
            if opts.progress {
                let done = b + 1 - start_batch;
                let rate = (done * config.batch) as f64 / epoch_start.elapsed().as_secs_f64();
                bar.set_position(b as u64 + 1);
                bar.set_message(format!(
                    "epoch {}/{}  loss {:.3}  lr {:.1e}  {rate:.0} img/s",
                    epoch + 1,
                    config.epochs,
                    loss_sum / loss_n as f64,
                    lr
                ));
            } else if state.step % 50 == 0 {
                let done = b + 1 - start_batch;
                let rate = (done * config.batch) as f64 / epoch_start.elapsed().as_secs_f64();
                let left = (batches_per_epoch - b - 1) * config.batch;
                let line = format!(
                    "epoch {}/{} batch {}/{} loss {:.3} lr {:.1e} {:.0} img/s, epoch ends in {:.0} s",
                    epoch + 1,
                    config.epochs,
                    b + 1,
                    batches_per_epoch,
                    loss_sum / loss_n as f64,
                    lr,
                    rate,
                    left as f64 / rate.max(1e-9)
                );
                say(&line);
            }
            if opts.checkpoint_every_steps > 0 && state.step % opts.checkpoint_every_steps == 0 {
                save_checkpoint(&opts.out_dir, &model, &optim, &state)?;
            }
        }
        bar.finish_and_clear();
        if stopped {
            break;
        }
        let seconds = epoch_start.elapsed().as_secs_f64();
        recalibrate_batch_norm(
            &mut model,
            &train_items,
            config.batch_norm_images,
            config.batch,
        );
        let tally = validate(&model.valid(), &val_items, &config.tasks);
        let trained = (batches_per_epoch - start_batch) * config.batch;
        let log = EpochLog {
            epoch: epoch + 1,
            train_loss: loss_sum / loss_n.max(1) as f64,
            images_per_s: trained as f64 / seconds.max(1e-9),
            seconds,
            age3: tally.age_accuracy(AgeGrouping::Three),
            age5: tally.age_accuracy(AgeGrouping::Five),
            age10: tally.age_accuracy(AgeGrouping::Ten),
            age_mae: tally.age_mae(),
            gender: tally.gender.accuracy(),
            race: tally.race.accuracy(),
            val_images: tally.images,
        };
        say(&format!(
            "epoch {}/{}: loss {:.4}, {:.0} img/s, {:.0} s; validation {}",
            epoch + 1,
            config.epochs,
            log.train_loss,
            log.images_per_s,
            seconds,
            tally.line()
        ));
        state.history.push(log);
        state.epoch += 1;
        state.batch_in_epoch = 0;
        let score = config.age_readout.score(&tally);
        if !val_items.is_empty() && state.best_score.is_none_or(|best| score > best) {
            state.best_score = Some(score);
            state.best_epoch = Some(epoch + 1);
            save_network(&model, &opts.out_dir.join(BEST_FILE))?;
        }
        save_network(&model, &opts.out_dir.join(epoch_file(epoch + 1)))?;
        save_checkpoint(&opts.out_dir, &model, &optim, &state)?;
    }
    if stopped {
        save_checkpoint(&opts.out_dir, &model, &optim, &state)?;
        say(&format!(
            "stopped at epoch {}, batch {}; checkpoint saved: run again with --resume to continue",
            state.epoch + 1,
            state.batch_in_epoch
        ));
        return Ok(Outcome {
            state,
            onnx: None,
            stopped: true,
        });
    }
    let path = opts
        .export_path
        .clone()
        .unwrap_or_else(|| opts.out_dir.join("faceattr.onnx"));
    let (check_input, check_n) = check_batch(&val_items, &train_items, 16);
    let diff = export_run(&model, &state, &path, check_input, check_n, "")?;
    say(&format!(
        "exported {} (ONNX Runtime vs burn on {check_n} crops: max |difference| {diff:.2e})",
        path.display()
    ));
    let mut report = fs::File::create(opts.out_dir.join("export_check.txt"))
        .map_err(|e| TrainError::Export(e.to_string()))?;
    let _ = writeln!(report, "crops {check_n}\nmax_abs_diff {diff:e}");
    if diff > 1e-4 {
        return Err(TrainError::Export(format!(
            "ONNX Runtime differs from burn by {diff:e} (more than 1e-4)"
        )));
    }
    Ok(Outcome {
        state,
        onnx: Some(path),
        stopped: false,
    })
}
