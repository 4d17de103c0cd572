"""Studies of distillation: teacher, plain and distilled students trained as experiment-file runs,
evaluated, and reported with the spread over seeds (`unikd.study.study.run_study`)."""
