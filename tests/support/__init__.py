"""What the tests share: starting and stopping real processes (procs,
supervision, netns for several hosts), checking load (loaddriver, drivers),
stand-in servers (routers), metrics scrapes (scrape) and Hypothesis
strategies (strategies). Test modules import from here, never from each other."""
