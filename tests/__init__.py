# A package, so that mmsegmentation's wheel (which installs a top-level
# ``tests`` package) cannot shadow this test suite.
