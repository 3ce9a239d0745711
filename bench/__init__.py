"""Side-by-side benchmark of keyshard against nutcracker (twemproxy) 0.5.0: `python -m bench`.

What runs. Two redis-servers and one memcached on 127.0.0.1 (free ports). In front of them,
nutcracker 0.5.0 at `-v 4` (its fastest log level) and keyshard, each with its own listen and
stats ports but the same pools: `alpha` (redis, ketama, fnv1a_64, both redis-servers) and
`gamma` (memcache, ketama, fnv1a_64). Before the first run both redis-servers get every key of
the redis-benchmark key space, so GETs hit.

Workloads (`--only` takes these names or globs):
  get_p1 set_p1 get_p16 set_p16   redis-benchmark -t get|set -P 1|16 -c 50 -r 100000
  mget10 mget10_p16               redis-benchmark MGET with 10 random keys (split over servers),
                                  -P 1 and -P 16
  idle1000                        1000 idle client connections held open by a separate process
                                  (bench/idle.py) plus GET -P 1 load; a fresh proxy per run, RSS
                                  before, with the idle connections, after the load
  set4k                           SET of 4096-byte values (key space 10,000: 40 MB per server)
  mc_get mc_set                   memcslap --test=get|set --concurrency=50 (memcslap's output is
                                  usable: its timed phase gives requests/s; it has no latency
                                  percentiles, so p99 is n/a; the get test first loads its keys
                                  over one connection, and those requests count in CPU/request)

Method.
- Interleaving: for each workload, runs alternate between the proxies, three repetitions by
  default, and the order flips each repetition (nut, ks, ks, nut, nut, ks): drift of the
  machine over time hits both alike, and neither proxy always runs second (in two-proxy
  runs of one build against another, the second run of a pair was behind by ~2% on
  average). Each cell
  of the table is the median of the repetitions; the chart's whiskers show min and max.
  Ratios are of the medians; in brackets, the range of the per-repetition ratios (each from
  two runs adjacent in time): a range that straddles 1.0 means "no difference measured".
- N: a short warm-up run on every proxy precedes each workload; the fastest warm-up rate
  sets N so a run on that proxy lasts about `--seconds` (4 s), and one disturbed warm-up
  cannot make every run short. Every proxy gets the same N.
- Requests/s and p99 come from the client (redis-benchmark `--csv`, memcslap's timed phase).
- CPU per request: utime+stime (plus reaped children) of the proxy's process tree from
  /proc/<pid>/stat, read just before the client starts and after it exits, converted from
  clock ticks with os.sysconf('SC_CLK_TCK') and divided by the requests the client sent
  (an MGET of 10 keys is one request, however many fragments the proxy makes of it).
  One tick is 10 ms, under 1% of a 4 s run at these rates; `--quick` runs are noisier.
  CPU per request is the fairer figure on this machine (below): it does not depend on how much
  core time the client and the backends leave to the proxy.
- RSS: VmRSS of the proxy's process tree after the run. KB per idle connection is
  (RSS with the idle connections - RSS before) / connections, on a freshly started proxy
  (a warm one would reuse freed memory and show ~0).
- Noise gauge: during every run the task CPU of the whole machine (/proc/stat) minus that of
  our own processes (proxy, backends, client, this program) is "foreign" CPU: another test
  suite on the same cores. The hypervisor's share (steal) is counted too. Workloads with a
  run where either passed 10% are marked ‡ in the table.
- Retries: a run where either passed 10% is measured again right away, up to
  `--retry-disturbed` more times (default 2; 0 turns it off), and the least disturbed attempt
  is kept (a failed attempt ends the retries and is reported as the run's failure, so a
  retry never hides a crash). The criterion is what /proc/stat says of the others, never the
  result, and it is the same for every proxy; the attempts not kept stay in results.json
  (the kept run's extra["discarded"]) and the report counts them. A disturbance that lasts
  (steal stayed at 50-80% for minutes on this machine) outlasts the retries, hence ‡.
- Robustness: a run is bounded by N and by a timeout (the client is killed); a proxy that dies
  is restarted for the next run and the run is reported as failed; each run starts with a
  byte-exact SET/GET probe. Every process is stopped by PID at the end, also on Ctrl-C.

Caveats of a 2-core machine. redis-benchmark (single-threaded), memcslap (50 threads), two
redis-servers, memcached and the proxy all share two cores, so requests/s measures the whole
system, not the proxy alone: a proxy that uses more CPU also takes it from the client and the
backends, and a proxy close to nutcracker in rps may still cost more CPU. Ratios between the
proxies are meaningful; absolute numbers are not comparable with other machines. Run it on an
otherwise idle machine; `--proxies nutcracker,nutcracker` shows the noise floor (ratios near 1),
and `--proxies keyshard=DIR,keyshard` compares another keyshard tree (a worktree of an older
commit, its extensions built in place) with this one in the same interleaved run.

Outputs: a Markdown table on stdout and in bench/out/results.md, bench/out/results.json (every
run and the medians), bench/out/results.png (requests/s and CPU µs/request per workload), and
the logs of every process under bench/out/logs/.
"""
