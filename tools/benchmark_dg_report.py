"""The report of tools/benchmark_dg.py: per-run numbers, table, JSON.

``tools/benchmark_dg.py`` runs the benchmark (data, sweep); this module
turns the sweep's records into the numbers it reports: the unseen and seen
domains' OD / OC Dice of every run, the mean +- std table over seeds and
the ``--out-json`` file. It is loaded by path (``tools/`` is not a
package) and runs nothing itself.
"""

import json

import numpy as np


def run_result(record, domains):
    """One run's numbers as the benchmark reports them.

    Args:
        record (dict): A run of :func:`sweep.sweep`'s ``records``.
        domains (tuple[int]): All domains; those but the run's target are
            its sources.

    Raises:
        KeyError: If the run's metrics lack a domain's OD/OC Dice.

    Returns:
        dict: ``unseen_OD``, ``unseen_OC``, ``seen_OD``, ``seen_OC`` (Dice,
        %, the seen ones averaged over the three source domains) and
        ``seconds`` (training + test of this run; 0 if done before).
    """
    target = record['k']
    metrics = record['results']
    sources = [d for d in domains if d != target]
    out = dict(
        seconds=(record['train_seconds'] or 0) + (record['test_seconds'] or 0)
    )
    for s in ('OD', 'OC'):
        keys = [f'Domain{d}/{s}_Dice' for d in (target, *sources)]
        missing = [k for k in keys if k not in metrics]
        if missing:
            raise KeyError(f'{record["metrics"]}: no {missing}')
        out[f'unseen_{s}'] = float(metrics[keys[0]])
        out[f'seen_{s}'] = float(np.mean([metrics[k] for k in keys[1:]]))
    return out


def summarize(results, variants, targets):
    """Format the mean +- std table of the unseen (and seen) domain Dice.

    Args:
        results (dict): ``results[variant][target]`` is a list of
            :func:`run_result` outputs, one per seed.
        variants (list[str]): Variants in row order.
        targets (list[int]): Held-out domains in row order.

    Returns:
        str: The table, one row per variant x target plus a mean row per
        variant (mean over targets of each seed's value, then mean +- std
        over seeds).
    """

    def cell(values):
        values = np.asarray(values, float)
        return f'{values.mean():6.2f} +- {values.std():5.2f}'

    keys = ('unseen_OD', 'unseen_OC', 'seen_OD', 'seen_OC')
    header = (
        f'{"variant":<18} {"target":<8} {"unseen OD Dice":>16} '
        f'{"unseen OC Dice":>16} {"seen OD Dice":>16} {"seen OC Dice":>16}'
    )
    lines = [header, '-' * len(header)]
    for variant in variants:
        for target in targets:
            runs = results[variant][target]
            cells = ' '.join(f'{cell([r[k] for r in runs]):>16}' for k in keys)
            lines.append(f'{variant:<18} {"Domain" + str(target):<8} {cells}')
        if len(targets) > 1:
            # Per seed: mean over targets; then the spread over seeds.
            n_seeds = len(results[variant][targets[0]])
            per_seed = {
                k: [
                    np.mean([results[variant][t][i][k] for t in targets])
                    for i in range(n_seeds)
                ]
                for k in keys
            }
            cells = ' '.join(f'{cell(per_seed[k]):>16}' for k in keys)
            lines.append(f'{variant:<18} {"mean":<8} {cells}')
        lines.append('')
    return '\n'.join(lines)


def collect(records, variants, targets, domains):
    """Group the sweep's runs by variant and target.

    Args:
        records (list[dict]): :func:`sweep.sweep`'s ``records``.
        variants (list[str]): Variant labels.
        targets (list[int]): Held-out domains.
        domains (tuple[int]): All domains.

    Returns:
        dict: ``results[variant][target]``: list of :func:`run_result`
        outputs in seed order.
    """
    results = {v: {t: [] for t in targets} for v in variants}
    # The sweep's records come in (target, seed, variant) order.
    for record in records:
        out = run_result(record, domains)
        results[record['variant']][record['k']].append(out)
    return results


def write(args, results, wall, cpu):
    """Print the table and the timing; write ``--out-json`` if asked.

    Args:
        args (argparse.Namespace): The benchmark's parsed command line.
        results (dict): From :func:`collect`.
        wall (float): Wall time of the whole benchmark, seconds.
        cpu (float): Process CPU time of it, seconds.
    """
    print()
    print(
        f'Unseen-domain Dice (%), mean +- std over seeds {args.seeds}; '
        f'{args.iters} iterations, {args.crop} px crops, head channels '
        f'{args.channels}, {args.cases} images per domain:'
    )
    print(summarize(results, args.variants, args.targets))
    n_runs = sum(len(runs) for r in results.values() for runs in r.values())
    print(
        f'Total wall time {wall / 60:.1f} min (process CPU time '
        f'{cpu / 60:.1f} min) for {n_runs} runs.'
    )
    if args.out_json:
        with open(args.out_json, 'w') as f:
            json.dump(
                dict(
                    args=vars(args),
                    wall_seconds=wall,
                    cpu_seconds=cpu,
                    results={
                        v: {f'Domain{t}': runs for t, runs in r.items()}
                        for v, r in results.items()
                    },
                ),
                f,
                indent=2,
            )
        print(f'Per-run numbers in {args.out_json}')
