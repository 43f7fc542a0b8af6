// pss-check evaluates every pod template in Kubernetes manifests against a Pod Security Standard
// level, with the Pod Security admission controller's own checks (k8s.io/pod-security-admission).
//
//	pss-check [-level restricted] [-version latest] FILE...   ("-" reads stdin)
//
// It prints one line per workload and exits 1 if any violates the level.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/yaml"
)

type workload struct {
	name string
	meta *metav1.ObjectMeta
	spec *corev1.PodSpec
}

func podTemplate(doc []byte) (*workload, error) {
	var head struct {
		Kind     string            `json:"kind"`
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return nil, err
	}
	name := head.Kind + "/" + head.Metadata.Name
	switch head.Kind {
	case "Pod":
		var o corev1.Pod
		err := yaml.UnmarshalStrict(doc, &o)
		return &workload{name, &o.ObjectMeta, &o.Spec}, err
	case "Deployment":
		var o appsv1.Deployment
		err := yaml.UnmarshalStrict(doc, &o)
		return &workload{name, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec}, err
	case "StatefulSet":
		var o appsv1.StatefulSet
		err := yaml.UnmarshalStrict(doc, &o)
		return &workload{name, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec}, err
	case "DaemonSet":
		var o appsv1.DaemonSet
		err := yaml.UnmarshalStrict(doc, &o)
		return &workload{name, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec}, err
	case "Job":
		var o batchv1.Job
		err := yaml.UnmarshalStrict(doc, &o)
		return &workload{name, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec}, err
	case "CronJob":
		var o batchv1.CronJob
		err := yaml.UnmarshalStrict(doc, &o)
		return &workload{name, &o.Spec.JobTemplate.Spec.Template.ObjectMeta, &o.Spec.JobTemplate.Spec.Template.Spec}, err
	}
	return nil, nil
}

func open(path string) (io.ReadCloser, error) {
	if path == "-" {
		return io.NopCloser(os.Stdin), nil
	}
	return os.Open(path)
}

func main() {
	level := flag.String("level", "restricted", "Pod Security level: baseline or restricted")
	version := flag.String("version", "latest", "policy version, e.g. v1.30 or latest")
	flag.Parse()
	lvl, err := api.ParseLevel(*level)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pss-check:", err)
		os.Exit(2)
	}
	ver, err := api.ParseVersion(*version)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pss-check:", err)
		os.Exit(2)
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pss-check:", err)
		os.Exit(2)
	}
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: pss-check [-level restricted] [-version latest] FILE... (- for stdin)")
		os.Exit(2)
	}
	checked, failed := 0, 0
	for _, path := range flag.Args() {
		file, err := open(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "pss-check:", err)
			os.Exit(2)
		}
		reader := utilyaml.NewYAMLReader(bufio.NewReader(file))
		for {
			doc, err := reader.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "pss-check: %s: %v\n", path, err)
				os.Exit(2)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			w, err := podTemplate(doc)
			if err != nil {
				fmt.Fprintf(os.Stderr, "pss-check: %s: %v\n", path, err)
				os.Exit(2)
			}
			if w == nil {
				continue
			}
			checked++
			var problems []string
			for _, result := range evaluator.EvaluatePod(api.LevelVersion{Level: lvl, Version: ver}, w.meta, w.spec) {
				if !result.Allowed {
					problems = append(problems, result.ForbiddenReason+": "+result.ForbiddenDetail)
				}
			}
			if len(problems) == 0 {
				fmt.Printf("PASS %s (%s)\n", w.name, lvl)
				continue
			}
			failed++
			for _, p := range problems {
				fmt.Printf("FAIL %s (%s): %s\n", w.name, lvl, p)
			}
		}
		file.Close()
	}
	fmt.Printf("%d workload(s) checked, %d violate %s\n", checked, failed, lvl)
	if failed > 0 {
		os.Exit(1)
	}
}
